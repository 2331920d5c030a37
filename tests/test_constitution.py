"""The constitution loader: schema, extends/drop, hashing, and file:line:field errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cai.constitution import Constitution, ConstitutionError, load_constitution
from constitutions import names as shipped_names

MINIMAL = """\
name: tiny
principles:
  - name: harmful
    critique: Is it harmful?
    revision: Make it harmless.
"""
# a typo'd key on line 7 (also used by the CLI tests)
TYPO = """\
name: x
principles:
  - name: a
    critique: c
    revision: r
  - name: b
    critque: c
    revision: r
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list:
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    return info.value.problems


# (case id, YAML text, expected line, expected field, text the message must contain)
MALFORMED = [
    (
        "yaml-syntax",
        """\
        name: x
        principles: [
          {name: a, critique: c, revision: r}
        description: oops
        """,
        4,
        "yaml",
        "expected ','",
    ),
    (
        "bad-indent",
        """\
        name: x
        principles:
          - name: a
            critique: c
           revision: r
        """,
        5,
        "yaml",
        "",
    ),
    ("unknown-key-typo", TYPO, 7, "principles[1].critque", "did you mean 'critique'"),
    (
        "unknown-top-level-key",
        """\
        name: x
        judge_principle:
          - {name: j, question: Which is better?}
        principles:
          - {name: a, critique: c, revision: r}
        """,
        2,
        "judge_principle",
        "did you mean 'judge_principles'",
    ),
    (
        "unknown-defaults-key",
        """\
        name: x
        principles:
          - {name: a, critique: c, revision: r}
        defaults:
          revisions: 2
          stop_phrase: [No revision needed]
        """,
        6,
        "defaults.stop_phrase",
        "did you mean 'stop_phrases'",
    ),
    (
        "missing-revision",
        """\
        name: x
        principles:
          - name: a
            critique: c
            revision: r
          - name: b
            critique: c
        """,
        6,
        "principles[1].revision",
        "required field is missing",
    ),
    (
        "missing-name",
        """\
        version: 2
        principles:
          - {name: a, critique: c, revision: r}
        """,
        1,
        "name",
        "required field is missing",
    ),
    (
        "empty-principles",
        """\
        name: x
        description: nothing here
        principles: []
        """,
        3,
        "principles",
        "must have at least 1 item(s), got 0",
    ),
    (
        "duplicate-principle-name",
        """\
        name: x
        principles:
          - name: a
            critique: c
            revision: r
          - name: b
            critique: c
            revision: r
          - name: a
            critique: c2
            revision: r2
        """,
        9,
        "principles[2].name",
        "duplicate name 'a' (first used at line 3)",
    ),
    (
        "duplicate-judge-name",
        """\
        name: x
        principles:
          - {name: a, critique: c, revision: r}
        judge_principles:
          - {name: j, question: Which is less harmful?}
          - {name: j, question: Which is more honest?}
        """,
        6,
        "judge_principles[1].name",
        "duplicate name 'j' (first used at line 5)",
    ),
    (
        "wrong-type-int",
        """\
        name: x
        principles:
          - {name: a, critique: c, revision: r}
        defaults:
          revisions: two
        """,
        5,
        "defaults.revisions",
        "valid integer",
    ),
    (
        "wrong-type-list",
        """\
        name: x
        principles:
          - name: a
            critique: c
            revision: r
            tags: toxic
        """,
        6,
        "principles[0].tags",
        "valid list",
    ),
    (
        "wrong-type-mapping-for-list",
        """\
        name: x
        principles:
          harmful: {critique: c, revision: r}
        """,
        2,
        "principles",
        "valid list",
    ),
    (
        "wrong-type-str",
        """\
        name: x
        principles:
          - name: a
            critique: [c]
            revision: r
        """,
        4,
        "principles[0].critique",
        "valid string",
    ),
    (
        "bad-sampling",
        """\
        name: x
        principles:
          - {name: a, critique: c, revision: r}
        defaults:
          sampling: randm
        """,
        5,
        "defaults.sampling",
        "'random', 'all' or 'sequential'",
    ),
    (
        "negative-revisions",
        """\
        name: x
        principles:
          - {name: a, critique: c, revision: r}
        defaults: {revisions: -1}
        """,
        4,
        "defaults.revisions",
        "greater than or equal to 0",
    ),
    (
        "duplicate-yaml-key",
        """\
        name: x
        principles:
          - name: a
            critique: c
            critique: d
            revision: r
        """,
        5,
        "principles[0].critique",
        "duplicate key (first set at line 4)",
    ),
    (
        "python-tag",
        """\
        name: !!python/object/apply:os.system [echo hi]
        principles:
          - {name: a, critique: c, revision: r}
        """,
        1,
        "yaml",
        "constructor",
    ),
    (
        "top-level-list",
        """\
        - name: x
        """,
        1,
        "<document>",
        "expected a mapping",
    ),
    ("empty-file", "\n", 1, "<document>", "file is empty"),
    (
        "two-documents",
        """\
        name: x
        ---
        name: y
        """,
        2,
        "yaml",
        "single document",
    ),
    (
        "few-shot-missing-field",
        """\
        name: x
        principles:
          - {name: a, critique: c, revision: r}
        few_shot:
          - prompt: p
            response: r
            critique_request: cr
            critique: c
            revision: v
        """,
        5,
        "few_shot[0].revision_request",
        "required field is missing",
    ),
    (
        "drop-without-extends",
        """\
        name: x
        drop: [a]
        principles:
          - {name: a, critique: c, revision: r}
        """,
        2,
        "drop",
        "needs extends",
    ),
    (
        "missing-parent",
        """\
        name: x
        extends: harmles
        """,
        2,
        "extends",
        "did you mean 'harmless'",
    ),
    (
        "missing-parent-file",
        """\
        name: x
        extends: ./nowhere.yaml
        """,
        2,
        "extends",
        "no such file",
    ),
    (
        "drop-unknown-principle",
        """\
        name: x
        extends: harmless
        drop:
          - toxic
          - violense
        """,
        5,
        "drop[1]",
        "did you mean 'violence'",
    ),
    (
        "redefines-inherited",
        """\
        name: x
        extends: harmless
        principles:
          - name: toxic
            critique: c
            revision: r
        """,
        4,
        "principles[0].name",
        "add it to drop",
    ),
    (
        "control-character",
        "name: x\nprinciples: []\ndescription: bell\x07\n",
        3,
        "yaml",
        "control characters are not allowed",
    ),
    (
        "null-principle",
        """\
        name: x
        principles:
          -
          - {name: a, critique: c, revision: r}
        """,
        3,
        "principles[0]",
        "valid dictionary",
    ),
    (
        "self-extends",
        """\
        name: x
        extends: c.yaml
        """,
        2,
        "extends",
        "extends cycle",
    ),
]


@pytest.mark.parametrize(
    "text,line,field,fragment", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
def test_malformed_reports_file_line_field(tmp_path, text, line, field, fragment):
    path = write(tmp_path, text)
    problems = problems_of(path)
    first = problems[0]
    assert first.file == str(path.resolve())
    assert (first.line, first.field) == (line, field), str(first)
    assert fragment.lower() in first.message.lower(), str(first)
    assert str(first).startswith(f"{path.resolve()}:{first.line}: {field}: ")


def test_every_problem_in_a_file_is_reported(tmp_path):
    path = write(
        tmp_path,
        """\
        name: x
        principles:
          - name: a
            critque: c
            revision: r
        defaults:
          revisions: many
        """,
    )
    found = {(p.line, p.field) for p in problems_of(path)}
    assert found == {(4, "principles[0].critque"), (7, "defaults.revisions")}


def test_extends_cycle_names_the_chain(tmp_path):
    write(tmp_path, "name: a\nextends: b.yaml\n", "a.yaml")
    write(tmp_path, "name: b\n\nextends: ./a.yaml\n", "b.yaml")
    (problem,) = problems_of(tmp_path / "a.yaml")
    assert problem.file == str((tmp_path / "b.yaml").resolve())
    assert (problem.line, problem.field) == (3, "extends")
    assert "a.yaml -> b.yaml -> a.yaml" in problem.message


def test_error_in_parent_names_the_parent_file(tmp_path):
    write(tmp_path, "name: p\nprinciples:\n  - {name: a, critique: c, revison: r}\n", "parent.yaml")
    write(tmp_path, "name: child\nextends: parent.yaml\n", "child.yaml")
    problems = problems_of(tmp_path / "child.yaml")
    assert {(p.file, p.line, p.field) for p in problems} >= {
        (str((tmp_path / "parent.yaml").resolve()), 3, "principles[0].revison")
    }


def test_dropping_every_principle_is_an_error(tmp_path):
    write(tmp_path, MINIMAL, "parent.yaml")
    path = write(tmp_path, "name: child\nextends: parent.yaml\ndrop: [harmful]\n")
    (problem,) = problems_of(path)
    assert (problem.field, problem.line) == ("principles", 1)


def test_unknown_name_and_missing_path():
    with pytest.raises(ConstitutionError, match="did you mean 'privacy'"):
        load_constitution("privacyy")
    with pytest.raises(ConstitutionError, match="no such file"):
        load_constitution("does/not/exist.yaml")


def test_extends_merges_parent_and_child(tmp_path):
    write(
        tmp_path,
        """\
        name: parent
        version: 3
        language: de
        principles:
          - {name: a, critique: ca, revision: ra}
          - {name: b, critique: cb, revision: rb}
        judge_principles:
          - {name: ja, question: Which is better?}
        few_shot:
          - {prompt: p, response: r, critique_request: cq, critique: c, revision_request: rq, revision: v}
        defaults: {revisions: 3, sampling: sequential, stop_phrases: [No revision needed]}
        """,
        "parent.yaml",
    )
    path = write(
        tmp_path,
        """\
        name: child
        extends: ./parent.yaml
        drop: [a]
        principles:
          - {name: c, critique: cc, revision: rc, tags: [new]}
        defaults: {revisions: 1}
        """,
    )
    c = load_constitution(path)
    assert [p.name for p in c.principles] == ["b", "c"]
    assert [j.name for j in c.judge_principles] == ["ja"]
    assert (c.name, c.version, c.language, len(c.few_shot)) == ("child", "3", "de", 1)
    assert c.defaults.model_dump() == {
        "revisions": 1,
        "sampling": "sequential",
        "seed": 0,
        "stop_phrases": ["No revision needed"],
    }
    assert c.principle("c").tags == ["new"]


def test_extends_a_shipped_constitution_by_name(tmp_path):
    path = write(
        tmp_path,
        """\
        name: mine
        extends: harmless
        drop: [evasive]
        few_shot: []
        """,
    )
    c = load_constitution(path)
    harmless = load_constitution("harmless")
    assert len(c.principles) == len(harmless.principles) - 1
    assert "evasive" not in {p.name for p in c.principles}
    assert c.few_shot == [] and c.defaults == harmless.defaults


def test_yaml_anchors_and_numeric_version_are_accepted(tmp_path):
    path = write(
        tmp_path,
        """\
        name: anchors
        version: 2
        principles:
          - &base {name: a, critique: same, revision: same}
          - <<: *base
            name: b
        """,
    )
    c = load_constitution(path)
    assert c.version == "2" and c.principle("b").critique == "same"


def test_hash_is_content_based(tmp_path):
    one = load_constitution(write(tmp_path, MINIMAL, "one.yaml"))
    reordered = write(
        tmp_path,
        """\
        principles:
          - revision: Make it harmless.
            critique: Is it harmful?
            name: harmful
        # a comment does not change the content
        name: tiny
        version: "1"
        """,
        "two.yaml",
    )
    assert load_constitution(reordered).hash == one.hash
    changed = write(tmp_path, MINIMAL.replace("Make it harmless.", "Make it safe."), "three.yaml")
    assert load_constitution(changed).hash != one.hash
    assert one.id == f"tiny@1#{one.hash}" and len(one.hash) == 16


def test_hash_follows_copies():
    harmless = load_constitution("harmless")
    copy = harmless.model_copy(update={"defaults": harmless.defaults.model_copy(update={"revisions": 4})})
    assert copy.hash != harmless.hash
    assert copy.model_copy().hash == copy.hash


def test_reload_sees_edits_to_file_and_parent(tmp_path):
    parent = write(tmp_path, MINIMAL, "parent.yaml")
    child = write(tmp_path, "name: child\nextends: parent.yaml\n", "child.yaml")
    before = load_constitution(child)
    assert load_constitution(child) is before  # cached while unchanged
    # same size, and likely the same mtime tick: still seen
    parent.write_text(MINIMAL.replace("Is it harmful?", "Is it hurtful?"), encoding="utf-8")
    after = load_constitution(child)
    assert after.principle("harmful").critique == "Is it hurtful?"
    assert after.hash != before.hash


def test_python_construction_checks_duplicates():
    p = {"name": "a", "critique": "c", "revision": "r"}
    with pytest.raises(ValueError, match="duplicate name 'a'"):
        Constitution(name="x", principles=[p, p])


# ---------------------------------------------------------------- shipped constitutions

SHIPPED = ["harmless", "helpful-honest", "ko-safety", "privacy"]


def test_shipped_list():
    assert set(SHIPPED) <= set(shipped_names())


@pytest.mark.parametrize("name", shipped_names())
def test_shipped_constitution_is_complete(name):
    c = load_constitution(name)
    assert c.name == name
    assert c.principles and c.judge_principles and c.few_shot
    assert c.defaults.stop_phrases and c.defaults.revisions >= 1
    for p in c.principles:
        assert p.critique.strip() and p.revision.strip() and p.rule.strip()
        assert p.statement == p.rule
        # short enough for a small model's context (UTF-8 bytes bound byte-level BPE tokens;
        # Korean costs about a token per byte), and each tells the model how to say "fine"
        assert len((p.critique + p.revision).encode()) < 450, p.name
        assert any(s.lower() in p.critique.lower() for s in c.defaults.stop_phrases), p.name
    for j in c.judge_principles:
        assert j.question.rstrip().endswith("?"), j.name
    for example in c.few_shot:
        messages = example.to_messages()
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert all(m["content"].strip() for m in messages)
    assert sum(len(m["content"].encode()) for e in c.few_shot for m in e.to_messages()) < 2000
    assert Constitution.model_validate(c.model_dump()).hash == c.hash


def test_harmless_covers_the_paper_themes():
    c = load_constitution("harmless")
    assert len(c.principles) >= 14 and len(c.judge_principles) >= 14
    text = " ".join(p.critique for p in c.principles).lower()
    for theme in (
        "harmful",
        "unethical",
        "racist",
        "sexist",
        "toxic",
        "dangerous",
        "illegal",
        "insensitive",
        "child",
        "crime",
        "self-harm",
        "manipulate",
    ):
        assert theme in text, theme
    assert all(j.question.startswith("Which of these assistant responses") for j in c.judge_principles)


def test_ko_safety_is_korean_with_the_five_seed_principles():
    c = load_constitution("ko-safety")
    assert c.language == "ko"
    assert [p.name for p in c.principles] == ["helpful", "harmless", "honest", "privacy", "no-discrimination"]
    hangul = lambda s: any("\uac00" <= ch <= "\ud7a3" for ch in s)  # noqa: E731
    assert all(hangul(p.critique) and hangul(p.revision) for p in c.principles)
    assert any(hangul(s) for s in c.defaults.stop_phrases)


def test_privacy_extends_harmless():
    privacy, harmless = load_constitution("privacy"), load_constitution("harmless")
    names = {p.name for p in privacy.principles}
    assert {"harmful", "crime", "personal-data", "surveillance"} <= names
    assert not {"violence", "self-harm"} & names
    assert privacy.defaults.stop_phrases == harmless.defaults.stop_phrases
    assert privacy.defaults.revisions == 1


def test_hash_is_stable_across_processes():
    code = (
        f"from cai.constitution import load_constitution as l;print(' '.join(l(n).hash for n in {shipped_names()!r}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out == [load_constitution(n).hash for n in shipped_names()]


def test_readme_example_loads(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- section: constitutions -->")[1].split("<!-- /section: constitutions -->")[0]
    example = section.split("```yaml\n")[1].split("```")[0]
    c = load_constitution(write(tmp_path, example, "readme.yaml"))
    assert c.principle("toxic").tags == ["toxicity"] and c.defaults.revisions == 2
