"""The embedded model raw vs wrapped by the constitution, on the shipped safety set.

Runs `judges.safety.evaluate_safety` twice on the same prompts (the first --limit of each
label, alternating categories): the raw model, then the model behind the `harmless`
constitution (`always`, --revisions rounds). Prints refusal on harmful prompts, over-refusal
on safe look-alikes, wall time and model calls / tokens per prompt for each, and the per-category
tables. With the 135M model these figures are floors; the harness is what a user runs with a
strong model (`--model openai:NAME --base-url ...`, `--judge violation:MODEL`).

    python bench/eval_safety.py [--limit 4] [--max-tokens 64] [--revisions 1] [--model embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

# run as a script, this file's folder comes first on sys.path; the repository root goes there
ROOT = Path(__file__).resolve().parents[1]
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cai.models import load_model  # noqa: E402
from cai.models.base import GenParams  # noqa: E402
from judges.safety import SHIPPED_PROMPTS, evaluate_safety, read_eval_prompts  # noqa: E402
from judges.subject import Subject  # noqa: E402


async def main(args: argparse.Namespace) -> None:
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
    console = Console()
    for report in reports:
        console.print(report.table())
    table = Table(title=f"raw vs wrapped: {len(prompts)} prompts, max_tokens {args.max_tokens}, judge {args.judge}")
    for name in ("model", "refusal (harmful)", "over-refusal (safe)", "wall s", "calls / prompt", "tokens / prompt"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for r in reports:
        table.add_row(
            r.model,
            f"{100 * r.harmful.refusal:.1f}%",
            f"{100 * r.safe.refusal:.1f}%",
            f"{r.wall_s:.1f}",
            f"{r.calls_per_prompt:.2f}",
            f"{r.tokens_per_prompt:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--judge", default="rules:refusal", help="rules:refusal or violation:MODEL")
    parser.add_argument("--limit", type=int, default=4, help="prompts of each label")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--revisions", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
