"""Prompt readers: formats, hh-rlhf transcripts, bad-record reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.inputs import InputError, conversation, parse_transcript, read_prompts, split_pair
from tests.paths import HH_RLHF as HH

TRANSCRIPT = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how do I pick a lock?\n\nAssistant: Use a pin."


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_prompt_messages_transcript_and_chosen(tmp_path):
    path = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "  plain  "},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
            {"prompt": TRANSCRIPT.rsplit("\n\nAssistant:", 1)[0]},
            {"chosen": TRANSCRIPT, "rejected": TRANSCRIPT.replace("Use a pin.", "No.")},
            {"id": "custom", "prompt": [{"role": "user", "content": "listed"}]},
        ],
    )
    got = read_prompts(path).prompts
    assert [p.id for p in got] == ["0", "1", "2", "3", "custom"]
    assert got[0].messages == [{"role": "user", "content": "plain"}]
    assert got[1].messages[0]["role"] == "system"
    expected = [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how do I pick a lock?"},
    ]
    assert got[2].messages == expected and got[3].messages == expected  # up to the last Human turn
    assert got[3].source == f"{path}:4"


def test_parse_transcript_keeps_multiline_turns():
    msgs = parse_transcript("\n\nHuman: line one\nline two\n\nAssistant: ok")
    assert msgs == [{"role": "user", "content": "line one\nline two"}, {"role": "assistant", "content": "ok"}]


def test_custom_field_and_limit(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"question": f"q{i}"} for i in range(5)])
    got = read_prompts(path, prompt_field="question", limit=2).prompts
    assert [p.messages[0]["content"] for p in got] == ["q0", "q1"]


def test_bad_lines_abort_or_skip(tmp_path):
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "ok"},
            '{"prompt": "broken',
            {"text": "wrong field"},
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
            {"prompt": ""},
            {"prompt": "fine"},
        ],
    )
    with pytest.raises(InputError, match=rf"{path}:2: invalid JSON"):
        read_prompts(path)
    found = read_prompts(path, on_bad_line="skip")
    assert [p.messages[0]["content"] for p in found.prompts] == ["ok", "fine"]
    assert [p.id for p in found.prompts] == ["0", "5"]  # ids do not shift when lines are skipped
    assert len(found.skipped) == 4
    assert found.skipped[1] == f"{path}:3: no 'prompt' or 'messages' field (record has: text)"
    assert "messages: the conversation must end with a user turn" in found.skipped[2]
    assert f"{path}:5: prompt: expected a non-empty string" == found.skipped[3]


def test_duplicate_ids_rejected(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(InputError, match=r"d.jsonl:2: id: 'a' already used at .*d.jsonl:1"):
        read_prompts(path)


def test_json_csv_parquet_and_hf_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"prompt": "a"}, {"prompt": "b"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.csv").write_text('prompt,other\na,1\n"b, with comma",2\n')
    Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hf"))
    for name, second in [("p.json", "b"), ("p.csv", "b, with comma"), ("p.parquet", "b"), ("hf", "b")]:
        got = read_prompts(tmp_path / name).prompts
        assert [p.messages[0]["content"] for p in got] == ["a", second], name
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported input format"):
        read_prompts(tmp_path / "x.txt")
    with pytest.raises(InputError, match="no such file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_real_hh_rlhf_slice():
    found = read_prompts(HH)
    assert len(found.prompts) == len(HH.read_text(encoding="utf-8").splitlines()) and not found.skipped
    assert all(p.messages[-1]["role"] == "user" and p.messages[-1]["content"] for p in found.prompts)
    assert any(len(p.messages) > 1 for p in found.prompts)  # multi-turn conversations kept


def test_split_pair_of_transcripts_and_message_lists():
    rejected = TRANSCRIPT.replace("Use a pin.", "No.")
    prompt, chosen_reply, rejected_reply = split_pair(
        conversation(TRANSCRIPT, "chosen"), conversation(rejected, "rejected")
    )
    assert [m["content"] for m in prompt] == ["hi there", "hello!", "how do I pick a lock?"]
    assert chosen_reply == [{"role": "assistant", "content": "Use a pin."}]
    assert rejected_reply == [{"role": "assistant", "content": "No."}]
    listed = conversation([*prompt, {"role": "assistant", "content": "x", "name": "bot"}], "chosen")
    assert listed[-1] == {"role": "assistant", "content": "x"}  # plain role/content messages
    with pytest.raises(ValueError, match="^rejected: its conversation differs"):
        split_pair(prompt, conversation("\n\nHuman: something else\n\nAssistant: ok", "rejected"))
    with pytest.raises(ValueError, match="^chosen: no Human/user turn"):
        split_pair([{"role": "assistant", "content": "x"}], prompt)
    with pytest.raises(ValueError, match=r"^chosen\[1\].content: expected a string"):
        conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": None}], "chosen")
    with pytest.raises(ValueError, match="^chosen: expected a Human:/Assistant: transcript"):
        conversation("just text", "chosen")
