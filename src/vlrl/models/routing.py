"""Routing replay for Mixture-of-Experts RL: record which experts each token used, force them later.

The router of the sampling pass and the router of the training pass can pick different experts for
the same token (numerics, a different engine, or weights that moved), and a token routed to other
experts is scored by another function: importance ratios drift even at ratio-1 steps. Rollout
Routing Replay (R3, arXiv 2510.11370) records the top-k experts of every token in every MoE layer
while sampling and makes the training forwards use them; R2 records them in the first training
forward of a step and replays them in the later ones.

Replay forces the *selection* only. The combine weights are recomputed from the live router
logits with the family's own formula (`ModelAdapter.route_weights`), so the gradient still reaches
the router: d out / d W_router flows through the weights of the replayed experts.

Routes are kept per sequence in its token order: [tokens, layers, k] (int16; `layers` are the
MoE layers in `adapter.routers` order, dense layers have none). A sequence is its prompt followed
by its response; a forward over a padded batch maps each cell to (sequence, position) or padding
(`Routes.aligned`), which makes one description of the layout serve right-padded full passes,
left-padded prompt prefills and row-wise continuations alike. Padding cells get experts 0..k-1:
any valid choice does, their outputs are masked.

Mechanism: forward hooks on the router module instances (a forward hook may return a
replacement output); transformers' MoE blocks read (logits, weights, indices) from the router, so
the replacement is the same tuple with the replayed indices and their recomputed weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from vlrl.models.adapters import ModelAdapter

REPLAY_MODES = ("off", "R2", "R3")
ROUTE_DTYPE = torch.int16  # expert ids < 32768 (Qwen3.5-397B has 512 experts)


class RouterHooks:
    """Forward hooks on every router of `model` (`adapter.routers`), for a `with` block.

    Each forward's routers report the experts they handed to the MoE block; `take()` returns them
    as [tokens, layers, k] in the forward's flattened (batch-major) token order. With `replay`
    set ([tokens, layers, k] long, same order) the routers hand those experts over instead, with
    weights recomputed from their live logits; `chosen()` then still tells what they would have
    picked themselves.
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.routers = [m for _, m in adapter.routers(model)]
        if not self.routers:
            raise ValueError(
                f"{adapter.family} has no MoE routers: routing replay applies to MoE families only"
            )
        self.adapter = adapter
        self.replay: Tensor | None = None
        self._used: list[list[Tensor]] = [[] for _ in self.routers]
        self._chosen: list[list[Tensor]] = [[] for _ in self.routers]
        self._handles = []

    def __enter__(self) -> RouterHooks:
        for layer, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module, args, output):
            at = router_fields(output)
            logits, weights, chosen = (output[at[f]] for f in ("logits", "weights", "indices"))
            self._chosen[layer].append(chosen.detach())
            if self.replay is None:
                self._used[layer].append(chosen.detach())
                return None
            indices = self.replay[:, layer].to(chosen.device)
            if indices.shape != chosen.shape:
                raise ValueError(
                    f"routing replay: {tuple(indices.shape)} routes for a router that chose {tuple(chosen.shape)}"
                )
            self._used[layer].append(indices)
            forced = self.adapter.route_weights(module, logits, indices).to(weights.dtype)
            replaced = list(output)
            replaced[at["weights"]], replaced[at["indices"]] = forced, indices
            return tuple(replaced)

        return hook

    def take(self) -> Tensor:
        """[tokens, layers, k] experts used by the last forward (then forgotten)."""
        return _pop(self._used, self._chosen)

    def chosen(self) -> Tensor:
        """[tokens, layers, k] experts the routers of the last forward picked themselves."""
        return _pop(self._chosen, None)


def router_fields(output: tuple[Tensor, Tensor, Tensor]) -> dict[str, int]:
    """Where a router's (logits, weights, indices) sit in its output tuple: transformers 5.25's
    routers return them in that order, 5.19's Aria router (the vLLM environment's) as (indices,
    weights, logits). The indices are the integer tensor, the weights the float one k wide."""
    ints = [i for i, t in enumerate(output) if not t.is_floating_point()]
    if len(output) != 3 or len(ints) != 1:
        raise ValueError(f"routing: a router output of {len(output)} tensors, {len(ints)} of them integer")
    if ints == [2]:
        return {"logits": 0, "weights": 1, "indices": 2}
    k = output[ints[0]].shape[-1]
    wide = [i for i in range(3) if i != ints[0] and output[i].shape[-1] == k]
    if len(wide) != 1:
        raise ValueError(
            f"routing: cannot tell a router's logits from its weights (outputs {len(wide)} of width k={k})"
        )
    (weights,) = wide
    return {"indices": ints[0], "weights": weights, "logits": 3 - ints[0] - weights}


def _pop(records: list[list[Tensor]], other: list[list[Tensor]] | None) -> Tensor:
    if any(len(r) != 1 for r in records):
        raise RuntimeError(f"routing: expected one forward per router, got {[len(r) for r in records]}")
    out = torch.stack([r.pop() for r in records], dim=1).to(ROUTE_DTYPE)
    if other is not None:
        for r in other:
            r.clear()
    return out


class Routes:
    """Routes of R sequences through one scoring call (one or more forwards): what they replay and
    what they used.

    `lengths[r]`: sequence r's tokens (prompt + response); `replay[r]`: [n_r, layers, k] routes
    to force on its first n_r tokens (the rest, like padding, get experts 0..k-1: a rollout never
    feeds a response's last token, which predicts nothing); `record`: keep the routes each token
    used in `used` ([lengths[r], layers, k], -1 where no forward covered a position) and the
    router's own picks in `chosen`.
    """

    def __init__(self, lengths: list[int], replay: list[Tensor] | None = None, record: bool = False):
        if replay is not None and len(replay) != len(lengths):
            raise ValueError(f"routing replay: {len(replay)} route tensors for {len(lengths)} sequences")
        self.lengths = lengths
        self.replay = replay
        self.record = record
        self.used: list[Tensor] | None = None
        self.chosen: list[Tensor] | None = None
        self._hooks: RouterHooks | None = None

    @contextmanager
    def attach(self, model: nn.Module, adapter: ModelAdapter) -> Iterator[Routes]:
        """Hook `model`'s routers for the forwards run inside (each inside `aligned`)."""
        with RouterHooks(model, adapter) as hooks:
            self._hooks = hooks
            try:
                yield self
            finally:
                self._hooks = None

    @contextmanager
    def aligned(self, rows: list[list[int]], positions: Tensor) -> Iterator[None]:
        """Run one forward over a [B, L] batch whose cell (b, j) is token `positions[b, j]` of
        sequences `rows[b]` (several when a prompt's prefill serves all its rows; replayed from
        the first), or padding where `positions` is -1."""
        hooks = self._hooks
        B, L = positions.shape
        pos = positions.cpu()
        if self.replay is not None:
            layers, k = self.replay[0].shape[1:]
            out = torch.arange(k).expand(B, L, layers, k).clone()
            for b, rs in enumerate(rows):
                if not rs:
                    continue
                src = self.replay[rs[0]]
                ok = (pos[b] >= 0) & (pos[b] < src.shape[0])
                out[b, ok] = src[pos[b, ok]].long()
            hooks.replay = out.flatten(0, 1)
        try:
            yield
        finally:
            hooks.replay = None
        chosen, used = hooks.chosen(), hooks.take()
        if not self.record:
            return
        if self.used is None:
            shape = used.shape[1:]
            self.used = [torch.full((n, *shape), -1, dtype=ROUTE_DTYPE) for n in self.lengths]
            self.chosen = [torch.full((n, *shape), -1, dtype=ROUTE_DTYPE) for n in self.lengths]
        used, chosen = used.view(B, L, *used.shape[1:]).cpu(), chosen.view(B, L, *chosen.shape[1:]).cpu()
        for b, rs in enumerate(rows):
            ok = pos[b] >= 0
            for r in rs:
                self.used[r][pos[b, ok]] = used[b, ok]
                self.chosen[r][pos[b, ok]] = chosen[b, ok]


@contextmanager
def aligned(routes: Routes | None, rows: list[list[int]], positions: Tensor) -> Iterator[None]:
    """`routes.aligned(rows, positions)`, or nothing without routes."""
    if routes is None:
        yield
        return
    with routes.aligned(rows, positions):
        yield


def span_positions(starts: list[int], lengths: list[int], width: int, left: bool = False) -> Tensor:
    """[B, width] positions of a padded batch whose row b holds its sequence's tokens
    starts[b] .. starts[b] + lengths[b] - 1, right-padded (or `left`-padded); -1 marks padding."""
    j = torch.arange(width)[None, :]
    n = torch.tensor(lengths)[:, None]
    offset = j - (width - n) if left else j
    pos = torch.tensor(starts)[:, None] + offset
    return pos.masked_fill((offset < 0) | (offset >= n), -1)


def route_mismatch(reference: list[Tensor], used: list[Tensor]) -> tuple[int, int]:
    """(differing, total) (token, layer) routes between two sets of per-sequence routes
    [n, layers, k]: a route differs when its set of k experts does; compared on the positions
    both hold (a rollout's routes stop before the last response token)."""
    differing = total = 0
    for a, b in zip(reference, used, strict=True):
        n = min(a.shape[0], b.shape[0])
        a, b = a[:n].sort(-1).values, b[:n].sort(-1).values
        known = (a >= 0).all(-1) & (b >= 0).all(-1)  # [n, layers]
        differing += int(((a != b).any(-1) & known).sum())
        total += int(known.sum())
    return differing, total
