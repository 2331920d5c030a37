"""Training in several processes (``accelerate launch`` / ``torchrun``): which process this is,
which one writes, and the launches that would silently go wrong.

Every process runs the same ``cai train`` command and trains its shard of each batch (DDP: gloo
on CPU, NCCL on GPUs; DeepSpeed ZeRO-3 when the recipe names a DeepSpeed config). Weights are
saved collectively by the trainer; everything else in the output folder (``trainer_log.json``,
provenance, the done marker, the report) is written by the main process (rank 0) alone, after
every process has finished training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cai.errors import LaunchError

# the launchers' variables for the number of processes: torchrun / accelerate, then MPI
# (accelerate's multi-CPU launch runs under mpirun)
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")

# as the launcher left it: TRL's vLLM colocation sets MASTER_ADDR in this process later
_MASTER_ADDR_AT_START = os.environ.get("MASTER_ADDR")

LAUNCH_HELP = (
    "launch with `accelerate launch --multi_gpu --num_processes N -m cai.cli train ...` "
    "(a machine without GPUs trains on CPU with gloo) or `torchrun --nproc_per_node N -m cai.cli train ...`"
)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _first_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise LaunchError(f"environment variable {name}={value!r}: expected a whole number") from None
    return default


def world(env: Mapping[str, str] | None = None) -> World:
    """This process's place among the launched ones (rank 0 of 1 when not launched). Raises
    ``LaunchError`` for a launch that asked for several processes but started one."""
    master = _MASTER_ADDR_AT_START if env is None else (env.get("MASTER_ADDR") or None)
    env = os.environ if env is None else env
    size = _first_int(env, SIZE_VARS, 1)
    if size == 1 and master and "ACCELERATE_MIXED_PRECISION" in env and not any(v in env for v in SIZE_VARS):
        # accelerate's simple launcher sets MASTER_ADDR only for --num_processes/--num_machines > 1,
        # yet starts one plain process: every "process" would train the whole data alone
        raise LaunchError(
            "accelerate launch asked for several processes but started one: without --multi_gpu "
            "(or a config file with a distributed_type) it runs a single process, and --cpu runs "
            f"several only under mpirun; {LAUNCH_HELP}"
        )
    rank = _first_int(env, RANK_VARS, 0)
    if not 0 <= rank < size:
        raise LaunchError(f"process rank {rank} is outside the world of {size} processes ({', '.join(RANK_VARS)})")
    return World(rank=rank, local_rank=_first_int(env, LOCAL_RANK_VARS, rank), size=size)


def require_one_process(what: str) -> None:
    """For commands that must not run once per process (they generate or write shared files)."""
    if world().size > 1:
        raise LaunchError(
            f"{what} runs in one process (it generates with the model and writes shared files); "
            "run it without accelerate launch / torchrun"
        )


def _group() -> Any:
    """torch.distributed when its process group is up (the trainer's arguments start it)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    dist = _group()
    if dist is not None:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (shared downloads/exports)."""
    is_main = world().main
    if not is_main:
        barrier()
    try:
        yield
    finally:
        if is_main:
            barrier()


def agree(what: str, value: Any) -> None:
    """Raise ``LaunchError`` unless every process holds the same ``value`` (e.g. the output
    folder: processes with different working directories or file systems would each write
    their own). A no-op in one process."""
    dist = _group()
    if dist is None:
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        seen = "; ".join(f"rank {i}: {v}" for i, v in enumerate(values))
        raise LaunchError(f"{what} differs between processes ({seen}); give every process the same shared folder")


def describe(trainer: Any) -> dict[str, Any]:
    """The run's process layout, for provenance: world size, backend, strategy, global batch."""
    state = trainer.accelerator.state
    args = trainer.args
    size = int(trainer.accelerator.num_processes)
    return {
        "world_size": size,
        "distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
        "backend": getattr(state, "backend", None),
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * size,
    }
