"""The order in which training prompts are drawn: deterministic, endless and resumable.

Epoch e visits every prompt once, in the permutation `torch.randperm(n)` draws from a generator
seeded with `seed + e`; batches run on across epoch boundaries. The position is two integers
(epoch, offset), so a checkpoint restores the exact prompt sequence without replaying it.

The sequence of global batches depends only on (n, seed, shuffle), never on the number of
processes: data parallelism is meant to split each global batch of k prompts, so a run gives the
same prompts per step whatever its world size.
"""

from __future__ import annotations

import torch


class PromptSampler:
    """Endless prompt indices in range(n): one permutation per epoch (identity when not shuffling)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n < 1:
            raise ValueError(f"cannot sample prompts from an empty data set (n={n})")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.offset = 0  # prompts of the current epoch already handed out
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        """The visiting order of `epoch`, a function of (n, seed, shuffle, epoch) only."""
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def next_batch(self, k: int) -> list[int]:
        """The next `k` prompt indices; an epoch ending inside the batch continues with the next one."""
        batch: list[int] = []
        while len(batch) < k:
            take = min(k - len(batch), self.n - self.offset)
            batch.extend(self._order[self.offset : self.offset + take])
            self.offset += take
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return batch

    def state_dict(self) -> dict:
        """The position and what the order depends on, for a checkpoint."""
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "n": self.n,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpointed position; a different data set size or seed is an error.

        Resuming with other data or another seed would silently train on a different prompt
        sequence than the one the checkpoint was part of.
        """
        saved = {key: state[key] for key in ("n", "seed", "shuffle") if key in state}
        current = {"n": self.n, "seed": self.seed, "shuffle": self.shuffle}
        if any(saved[key] != current[key] for key in saved):
            raise ValueError(
                f"the checkpoint's prompt order was made with {saved} but this run has {current}:"
                " resume with the same training data, data.seed and data.shuffle"
            )
        if not 0 <= state["offset"] < self.n:
            raise ValueError(f"sampler offset {state['offset']} is outside 0..{self.n - 1}")
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation(self.epoch)
