"""The pipeline's eval stage: base vs SFT vs DPO on held-out prompts, a before/after table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.pipeline import PipelineConfig, evaluate_stages
from training.provenance import is_done

pytestmark = pytest.mark.slow


def test_eval_stage_writes_the_before_after_table_and_resumes(tiny_hf_dir: Path, tmp_path: Path):  # noqa: F811
    config = PipelineConfig(prompts="unused.jsonl", eval_prompts="shipped", eval_limit=1, eval_max_tokens=8)
    models = {"base": f"hf:{tiny_hf_dir}", "sft": f"hf:{tiny_hf_dir}", "dpo": f"hf:{tiny_hf_dir}"}
    rows = evaluate_stages(config, models, tmp_path / "eval")
    assert [r["stage"] for r in rows] == ["base", "sft", "dpo"]
    assert all(r["failed"] == 0 and r["refusal_harmful"] is not None for r in rows)
    assert len({(r["refusal_harmful"], r["over_refusal_safe"]) for r in rows}) == 1  # the same model thrice
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert "| base |" in table and "| dpo |" in table and "over-refusal (safe)" in table
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == rows
    for stage in models:
        assert len((tmp_path / "eval" / stage / "responses.jsonl").read_text().splitlines()) == 2
    assert is_done(tmp_path / "eval") and evaluate_stages(config, models, tmp_path / "eval") == rows
