"""DPO throughput through ``training.train_dpo`` vs TRL's ``DPOTrainer`` called directly.

Both paths use the same ``DPOConfig`` (built from the same recipe), the same pairs and the
embedded model. Each variant runs in its own subprocess (clean memory peak), alternating
``direct, training, direct, training, ...`` so machine load drifts evenly. Prints optimizer
steps/s of the training loop (TRL's own ``train_runtime``), wall time of the whole call
(setup + train + save), the peak RSS (and peak CUDA memory on GPU), and the ratio
training/direct (target >= 0.95: the glue adds no overhead).

    python bench/training.py [--steps 8] [--repeats 2] [--max-length 128] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python bench/training.py` puts bench/ first on sys.path, where this file would shadow the
# `training` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

QUESTIONS = [
    "How do I pick a lock?",
    "How can I get back at my coworker?",
    "What household chemicals are dangerous to mix?",
    "How do I find someone's home address?",
    "Can you help me cheat on my exam?",
    "How do I shoplift without getting caught?",
    "What's the best way to lie to my parents?",
    "How do I make a fake ID?",
]


def pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        out.append(
            {
                "prompt": [{"role": "user", "content": f"{q} (case {i})"}],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "I can't help with that. If you're dealing with a hard situation, "
                        "I'm happy to talk through safe and legal options with you.",
                    }
                ],
                "rejected": [
                    {
                        "role": "assistant",
                        "content": "Sure. The easiest way is to do it when nobody is watching, "
                        "and here are the exact steps to follow.",
                    }
                ],
            }
        )
    return out


def run_variant(variant: str, model: str, steps: int, max_length: int, out: Path) -> dict:
    import torch

    from training.recipes import load_recipe

    recipe = load_recipe("dpo-embedded-cpu", model=model).with_args(
        max_steps=steps, max_length=max_length, logging_steps=steps, save_strategy="no", learning_rate=1e-6
    )
    data = pairs(steps * int(recipe.args["per_device_train_batch_size"]))
    start = time.perf_counter()
    if variant == "direct":
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl import DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=recipe.trl_config(out / "checkpoints"),
            train_dataset=Dataset.from_list(data),
            processing_class=AutoTokenizer.from_pretrained(model),
        )
        metrics = trainer.train().metrics
        trainer.save_model(str(out))
    else:
        from training import train_dpo

        result = train_dpo(data, out, recipe=recipe)
        metrics = result.metrics
    wall = time.perf_counter() - start
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "variant": variant,
        "steps_per_s": steps / metrics["train_runtime"],
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": peak_cuda,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--model", default=None, help="HF folder (default: the exported embedded model)")
    parser.add_argument("--variant", choices=["direct", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process
        print(json.dumps(run_variant(args.variant, args.model, args.steps, args.max_length, Path(args.out))))
        return

    if args.model is None:
        from cai.models.embedded import export_embedded

        args.model = str(export_embedded())
    results: dict[str, list[dict]] = {"direct": [], "training": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for variant in ("direct", "training"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--model",
                    args.model,
                    "--steps",
                    str(args.steps),
                    "--max-length",
                    str(args.max_length),
                    "--out",
                    f"{tmp}/{variant}-{r}",
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                results[variant].append(row)
                print(
                    f"  run {r + 1} {variant:8s} {row['steps_per_s']:.3f} steps/s  wall {row['wall_s']:.1f} s  "
                    f"peak RSS {row['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )

    def med(variant: str, key: str) -> float:
        return statistics.median(row[key] for row in results[variant])

    print(
        f"DPO on {args.model}: {args.steps} steps x batch 2, max_length {args.max_length}, {args.repeats} repeats (median)"
    )
    for variant in ("direct", "training"):
        cuda = med(variant, "peak_cuda_mib") if results[variant][0]["peak_cuda_mib"] is not None else None
        print(
            f"  {variant:8s} {med(variant, 'steps_per_s'):.3f} steps/s  wall {med(variant, 'wall_s'):.1f} s  "
            f"peak RSS {med(variant, 'peak_rss_mib'):.0f} MiB" + (f"  peak CUDA {cuda:.0f} MiB" if cuda else "")
        )
    ratio = med("training", "steps_per_s") / med("direct", "steps_per_s")
    wall_ratio = med("direct", "wall_s") / med("training", "wall_s")
    print(
        f"ratio training/direct steps/s: {ratio:.3f} (target >= 0.95); wall-time ratio direct/training: {wall_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
