"""Expert load of Mixture-of-Experts models: how evenly the routers spread tokens, per step.

RL on an MoE can collapse through its routers: a few experts take every token (the rest stop
learning and the model loses capacity), or experts stop receiving tokens at all. These metrics
(verl-ish names) watch for it; `vlrl.monitoring.alarms` fires `expert_collapse` and
`dead_experts` on them.

    moe/load_max_over_mean     max over layers of (tokens of the busiest expert / mean per expert);
                               1 is perfectly even, E means one expert took every token
    moe/load_cv                mean over layers of the coefficient of variation (population std /
                               mean) of the tokens per expert; 0 is even
    moe/layer_{i}/load_cv      the same per MoE layer i (0 = the first router)
    moe/router_entropy         mean over layers and tokens of the entropy (nats) of the router's
                               distribution over all experts: softmax of the logits, or for a
                               sigmoid router (GLM-4.5V) the sigmoid scores normalised to sum 1
    moe/dead_experts           (layer, expert) pairs that received no token in the last N steps

What is counted: every token the update's forward passes route (each expert a token is sent to
counts it once, so a step's counts sum to tokens x top-k), prompt and response alike, image
placeholders included and padding excluded. Where the policy scores a group through one shared
prompt pass, a prompt's tokens count once per prompt and each response's once per row. With
gradient checkpointing the backward pass re-runs the routers and every count doubles, which
leaves all these ratios unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from vlrl.models.routing import router_fields

RouterScores = Literal["softmax", "sigmoid"]


def load_max_over_mean(counts: Tensor) -> Tensor:
    """[L] per layer: tokens of the busiest expert over the mean per expert, from counts [L, E].

    >>> load_max_over_mean(torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])).tolist()
    [3.0, 1.0]
    """
    return counts.max(-1).values / counts.mean(-1).clamp(min=1e-12)


def load_cv(counts: Tensor) -> Tensor:
    """[L] per layer: coefficient of variation (population std / mean) of counts [L, E].

    >>> [round(v, 4) for v in load_cv(torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])).tolist()]
    [1.2247, 0.0]

    (mean 1, variance (4 + 0 + 1 + 1) / 4, so cv = sqrt(1.5).)
    """
    return counts.std(-1, correction=0) / counts.mean(-1).clamp(min=1e-12)


def router_entropy(logits: Tensor, scores: RouterScores = "softmax") -> Tensor:
    """[N] entropy (nats) of each token's distribution over the E experts, from logits [N, E]:
    softmax(logits), or for a sigmoid router sigmoid(logits) / its sum.

    >>> round(router_entropy(torch.zeros(1, 4)).item(), 6)  # uniform over 4: log 4
    1.386294
    """
    logits = logits.float()
    if scores == "softmax":
        logp = logits.log_softmax(-1)
    else:
        # log of s_e / sum s: logsigmoid keeps the small scores finite
        logs = torch.nn.functional.logsigmoid(logits)
        logp = logs - logs.logsumexp(-1, keepdim=True)
    return -(logp.exp() * logp).sum(-1)


def dead_experts(idle_steps: Tensor, after: int) -> int:
    """How many (layer, expert) pairs have been idle (no token) for `after` steps or more.

    >>> dead_experts(torch.tensor([[0, 3], [5, 1]]), after=3)
    2
    """
    return int((idle_steps >= after).sum())


class ExpertLoadMonitor:
    """Counts, per MoE layer, the tokens each expert receives and the router entropy during the
    policy's update passes, and turns them into the step's `moe/*` metrics.

    Forward hooks on the router instances (`adapter.routers(model)`; each returns
    (router_logits [N, E], routing_weights [N, k], selected_experts [N, k]) in transformers 5.25)
    and a forward pre-hook on the model, which keeps the pass's attention mask to leave padding
    out. Only router calls in training mode under autograd count: the update's passes, not the
    rollout's, the old policy's or the reference's (all without gradient). The hooks run
    before any other (routing replay's): the counts are the routers' own choice, which is what
    collapses.
    """

    def __init__(
        self,
        model: nn.Module,
        routers: list[tuple[str, nn.Module]],
        num_experts: int,
        scores: RouterScores = "softmax",
        dead_after: int = 20,
    ):
        self.scores = scores
        self.dead_after = dead_after
        L, E = len(routers), num_experts
        self.counts = torch.zeros(L, E, dtype=torch.float64)
        self.entropy_sum = torch.zeros(L, dtype=torch.float64)
        self.tokens = torch.zeros(L, dtype=torch.float64)
        self.idle = torch.zeros(L, E, dtype=torch.long)  # steps since each expert last got a token
        self._mask: Tensor | None = None
        self.handles = [model.register_forward_pre_hook(self._keep_mask, with_kwargs=True)]
        for layer, (_, router) in enumerate(routers):
            self.handles.append(router.register_forward_hook(self._counter(layer), prepend=True))

    @classmethod
    def for_model(cls, model: nn.Module, adapter, dead_after: int) -> ExpertLoadMonitor | None:
        """A monitor on `model`'s routers as its family's adapter lists them; None for a dense model."""
        routers = adapter.routers(model)
        if not routers:
            return None
        return cls(model, routers, num_experts(routers), adapter.router_scores, dead_after)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _keep_mask(self, module, args, kwargs) -> None:
        self._mask = kwargs.get("attention_mask")

    def _counter(self, layer: int) -> Callable:
        def count(module, args, output) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            at = router_fields(output)  # (logits, weights, indices), in this transformers' order
            logits, selected = output[at["logits"]], output[at["indices"]]
            keep = self._token_mask(selected.shape[0])
            if keep is not None:
                logits, selected = logits[keep], selected[keep]
            E = self.counts.shape[1]
            with torch.no_grad():
                self.counts[layer] += torch.bincount(selected.reshape(-1), minlength=E).double().cpu()
                self.entropy_sum[layer] += router_entropy(logits.detach(), self.scores).double().sum().cpu()
                self.tokens[layer] += selected.shape[0]

        return count

    def _token_mask(self, n: int) -> Tensor | None:
        """[n] bool: which of the router's n tokens (the pass's [B, L_new] flattened) are not
        padding; the mask of a pass continuing a cache spans the cache too, so its last L_new
        columns are the new tokens'. None when the pass had no mask to go by."""
        mask = self._mask
        if mask is None or mask.dim() != 2 or n % mask.shape[0]:
            return None
        new = n // mask.shape[0]
        if new > mask.shape[1]:
            return None
        return mask[:, -new:].reshape(-1).bool()

    def step_metrics(self, reduce: Callable[[dict[str, float]], dict[str, float]] | None = None) -> dict:
        """The `moe/*` metrics of the passes since the last call, and the counters reset; {} when no
        update pass ran (a skipped step), which does not advance the dead-expert clock. `reduce`
        sums a dict of floats over data-parallel ranks (`vlrl.distributed.all_reduce_sums`)."""
        if reduce is not None:
            self._reduce(reduce)
        counts, ent, tokens = self.counts, self.entropy_sum, self.tokens
        self.counts, self.entropy_sum, self.tokens = (torch.zeros_like(t) for t in (counts, ent, tokens))
        if not tokens.sum():
            return {}
        self.idle = torch.where(counts > 0, 0, self.idle + 1)
        cv = load_cv(counts)
        out = {
            "moe/load_max_over_mean": float(load_max_over_mean(counts).max()),
            "moe/load_cv": float(cv.mean()),
            "moe/router_entropy": float((ent / tokens.clamp(min=1)).mean()),
            "moe/dead_experts": float(dead_experts(self.idle, self.dead_after)),
        }
        out |= {f"moe/layer_{i}/load_cv": float(v) for i, v in enumerate(cv)}
        return out

    def _reduce(self, reduce: Callable[[dict[str, float]], dict[str, float]]) -> None:
        flat = torch.cat([self.counts.reshape(-1), self.entropy_sum, self.tokens])
        summed = reduce({str(i): v for i, v in enumerate(flat.tolist())})
        flat = torch.tensor([summed[str(i)] for i in range(flat.numel())], dtype=torch.float64)
        L, E = self.counts.shape
        self.counts = flat[: L * E].view(L, E)
        self.entropy_sum, self.tokens = flat[L * E : L * E + L], flat[L * E + L :]


def num_experts(routers: Iterable[tuple[str, nn.Module]]) -> int:
    """Experts per layer: the rows of the router's [E, H] weight (the same in every layer)."""
    sizes = {int(m.weight.shape[0]) for _, m in routers}
    if len(sizes) != 1:
        raise ValueError(f"routers disagree on the number of experts: {sorted(sizes)}")
    return sizes.pop()


__all__ = [
    "ExpertLoadMonitor",
    "dead_experts",
    "load_cv",
    "load_max_over_mean",
    "num_experts",
    "router_entropy",
]
