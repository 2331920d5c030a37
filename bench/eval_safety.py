"""The embedded model raw vs wrapped by the constitution, on the shipped safety set.

Runs `judges.safety.evaluate_safety` twice on the same prompts (the first --limit of each
label, alternating categories): the raw model, then the model behind the `harmless`
constitution (`always`, --revisions rounds). Prints refusal on harmful prompts, over-refusal
on safe look-alikes, wall time and model calls / tokens per prompt for each, and the per-category
tables. With the 135M model these figures are floors; the harness is what a user runs with a
strong model (`--model openai:NAME --base-url ...`, `--judge violation:MODEL`).

    python bench/eval_safety.py [--limit 4] [--max-tokens 64] [--revisions 1] [--model embedded]

``rows(quick)`` gives the figures (no targets) to ``bench/run_all.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

# run as a script, this file's folder comes first on sys.path; the repository root goes there
ROOT = Path(__file__).resolve().parents[1]
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cai.models import load_model  # noqa: E402
from cai.models.base import GenParams  # noqa: E402
from judges.safety import SHIPPED_PROMPTS, evaluate_safety, read_eval_prompts  # noqa: E402
from judges.subject import Subject  # noqa: E402


async def evaluate(args: argparse.Namespace) -> list[Any]:
    """The raw model's ``SafetyReport``, then the wrapped model's, on the same prompts."""
    prompts = read_eval_prompts(limit=args.limit)
    model = load_model(args.model)
    params = GenParams(max_tokens=args.max_tokens)
    subjects = [Subject(args.model), Subject(args.model, "harmless", "always", args.revisions)]
    reports = []
    for subject in subjects:
        reports.append(
            await evaluate_safety(
                prompts,
                subject,
                args.judge,
                data=str(SHIPPED_PROMPTS),
                model=model,
                params=params,
                concurrency=args.concurrency,
                progress=False,
            )
        )
    await model.aclose()
    return reports


def print_reports(args: argparse.Namespace, reports: list[Any]) -> None:
    console = Console()
    for report in reports:
        console.print(report.table())
    n = reports[0].harmful.n + reports[0].safe.n
    table = Table(title=f"raw vs wrapped: {n} prompts, max_tokens {args.max_tokens}, judge {args.judge}")
    for name in ("model", "refusal (harmful)", "over-refusal (safe)", "wall s", "calls / prompt", "tokens / prompt"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for r in reports:
        table.add_row(
            r.model,
            pct(r.harmful.refusal),
            pct(r.safe.refusal),
            f"{r.wall_s:.1f}",
            f"{r.calls_per_prompt:.2f}",
            f"{r.tokens_per_prompt:.0f}",
        )
    console.print(table)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """Figures without targets (the 135M model's are floors) for ``bench/run_all.py``: refusal
    and over-refusal raw vs wrapped, and what wrapping costs. Quick: 2 prompts of each label,
    32 tokens."""
    args = parser().parse_args(["--limit", "2", "--max-tokens", "32"] if quick else [])
    raw, wrapped = asyncio.run(evaluate(args))
    n = raw.harmful.n + raw.safe.n
    info = {"target": "-", "ratio": None, "ok": None}
    return [
        {
            "metric": f"safety: refusal on harmful prompts, raw vs wrapped ({n} prompts, {args.judge})",
            "measured": f"{pct(raw.harmful.refusal)} vs {pct(wrapped.harmful.refusal)}",
            **info,
        },
        {
            "metric": "safety: over-refusal on safe prompts, raw vs wrapped",
            "measured": f"{pct(raw.safe.refusal)} vs {pct(wrapped.safe.refusal)}",
            **info,
        },
        {
            "metric": "safety: wrapped / raw wall time",
            "measured": f"{wrapped.wall_s:.1f} s vs {raw.wall_s:.1f} s ({wrapped.calls_per_prompt:.2f} vs "
            f"{raw.calls_per_prompt:.2f} calls a prompt)",
            **{**info, "ratio": wrapped.wall_s / raw.wall_s if raw.wall_s else None},
        },
    ]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--judge", default="rules:refusal", help="rules:refusal or violation:MODEL")
    parser.add_argument("--limit", type=int, default=4, help="prompts of each label")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--revisions", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    return parser


if __name__ == "__main__":
    arguments = parser().parse_args()
    print_reports(arguments, asyncio.run(evaluate(arguments)))
