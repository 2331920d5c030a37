"""Encodings of prompt files: a UTF-8 BOM (Excel, Notepad) is accepted in .jsonl and .csv."""

from __future__ import annotations

from cai.inputs import read_prompts


def test_utf8_bom_is_accepted_in_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "bye"}\n')
    csv = tmp_path / "p.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt,id\nhello,a\n")
    assert [p.messages[0]["content"] for p in read_prompts(jsonl).prompts] == ["hello", "bye"]
    found = read_prompts(csv).prompts  # the header was '\ufeffprompt'
    assert [(p.id, p.messages[0]["content"]) for p in found] == [("a", "hello")]
