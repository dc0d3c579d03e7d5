"""The process world (rank, size) and the few collectives the trainers need.

Every collective is a no-op in a single process. In a distributed job, a collective that fails
(a peer rank died, or hangs past `distributed.timeout_s`) raises `CollectiveTimeout` naming the
rank and the collective, so the job ends with a message instead of hanging; torchrun then stops
the other ranks, and the run resumes from its last checkpoint with `train.resume=auto`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


class CollectiveTimeout(RuntimeError):
    """A collective failed or timed out: another rank died or hangs."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when launched by torchrun (even with one process): sharding and collectives apply."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: torch.device, backend: str = "auto", timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes in the environment, or stay a single process.

    `backend` auto picks nccl for CUDA devices and gloo otherwise. The timeout bounds every
    collective, which is what turns a dead or hung rank into an error on the others.
    """
    if "WORLD_SIZE" not in os.environ:
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=local_rank)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, size: int, rank: int) -> range:
    """Rank `rank`'s contiguous block of `n` items split over `size` ranks (sizes differ by at most 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _tensor(values, dtype) -> torch.Tensor:
    """A tensor where the backend can reduce it: the current GPU for nccl, the CPU for gloo."""
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor(values, dtype=dtype, device=device)


def _collective(what: str, fn):
    try:
        return fn()
    except RuntimeError as exc:
        raise CollectiveTimeout(
            f"rank {dist.get_rank()}: collective '{what}' failed: {exc}. Another rank probably died or "
            "hangs (see its log); the job stops here. Resume from the last checkpoint with "
            "train.resume=auto."
        ) from exc


def all_gather_objects(obj, what: str = "all_gather") -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    _collective(what, lambda: dist.all_gather_object(out, obj))
    return out


def broadcast_object(obj, src: int = 0, what: str = "broadcast"):
    """Rank `src`'s `obj` on every rank."""
    if not _active():
        return obj
    box = [obj]
    _collective(what, lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def all_reduce_sums(values: dict[str, float], what: str = "metrics") -> dict[str, float]:
    """Key-wise sums over ranks; every rank must pass the same keys."""
    if not _active():
        return dict(values)
    keys = sorted(values)
    t = _tensor([float(values[k]) for k in keys], torch.float64)
    _collective(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM))
    return dict(zip(keys, t.tolist(), strict=True))


def all_reduce_max(value: int, what: str = "max") -> int:
    if not _active():
        return value
    t = _tensor([value], torch.int64)
    _collective(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return int(t.item())


def barrier(what: str = "barrier") -> None:
    if _active():
        _collective(what, dist.barrier)
