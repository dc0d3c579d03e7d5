"""Data parallelism on torch.distributed: the process world, its collectives, FSDP2 sharding.

One process is the world-size-1 case of the same code: without `torchrun` no process group is
created and every collective below returns its input, so the trainers never branch on whether
they are distributed except where sharding itself is concerned (`vlrl.distributed.fsdp`).

Work is split by prompt groups: `shard_range(n, world)` gives each rank a contiguous block of a
global batch, so the G completions of a prompt always live on one rank and group advantages are
the same as in one process.
"""

from vlrl.distributed.world import (
    CollectiveTimeout,
    World,
    all_gather_objects,
    all_reduce_max,
    all_reduce_sums,
    barrier,
    broadcast_object,
    init_world,
    shard_range,
    shutdown,
)

__all__ = [
    "CollectiveTimeout",
    "World",
    "all_gather_objects",
    "all_reduce_max",
    "all_reduce_sums",
    "barrier",
    "broadcast_object",
    "init_world",
    "shard_range",
    "shutdown",
]
