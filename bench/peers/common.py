"""What the peer scripts share (standard library only: they run in the peers' own Python):
the workload file ``bench/run_all.py`` writes, and the one JSON line each prints."""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any


def args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True, help="the stub server's OpenAI base URL (.../v1)")
    ap.add_argument("--workload", required=True, help="the JSON file bench/run_all.py writes")
    ap.add_argument("--batch-size", type=int, default=50, help="distilabel's input_batch_size")
    return ap.parse_args()


def workload(path: str) -> dict[str, Any]:
    """``prompts`` (conversations), ``principles`` ({critique, revision}), ``max_tokens``,
    ``concurrency``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def question(conversation: list[dict[str, str]]) -> str:
    """A conversation as one prompt text (the peers take a question, not a message list)."""
    if len(conversation) == 1:
        return conversation[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in conversation)


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (distilabel runs steps in them)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def report(system: str, run: Callable[[], int]) -> None:
    """Time ``run`` (it returns the samples it finished) and print one JSON line."""
    cpu, start = cpu_s(), time.perf_counter()
    samples = run()
    wall = time.perf_counter() - start
    print(json.dumps({"system": system, "wall_s": wall, "cpu_s": cpu_s() - cpu, "samples": samples}), flush=True)
