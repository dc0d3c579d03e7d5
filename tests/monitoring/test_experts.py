"""Expert-load metrics: the pure functions on hand-derived numbers, and the monitor's hooks on a
hand-built router that returns what transformers' routers return (logits, weights, experts)."""

import math

import pytest
import torch
from torch import nn

from vlrl.monitoring.experts import (
    ExpertLoadMonitor,
    dead_experts,
    load_cv,
    load_max_over_mean,
    router_entropy,
)


def test_load_ratios_by_hand():
    counts = torch.tensor([[6.0, 2.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [8.0, 0.0, 0.0, 0.0]])
    # means 2, 2, 2: max / mean = 3, 1, 4
    assert load_max_over_mean(counts).tolist() == [3.0, 1.0, 4.0]
    # variances (16 + 0 + 4 + 4) / 4 = 6, 0, (36 + 4 + 4 + 4) / 4 = 12; cv = sqrt(var) / 2
    assert load_cv(counts).tolist() == pytest.approx([math.sqrt(6) / 2, 0.0, math.sqrt(12) / 2])


def test_router_entropy_softmax_and_normalised_sigmoid():
    # softmax([ln 3, 0]) = [3/4, 1/4]; sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4, normalised [3/4, 1/4]
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623
    assert router_entropy(torch.tensor([[math.log(3), 0.0]])).item() == pytest.approx(h)
    sig = torch.tensor([[math.log(3), -math.log(3)]])
    assert router_entropy(sig, "sigmoid").item() == pytest.approx(h)
    # equal logits: uniform over 8 experts either way
    assert router_entropy(torch.zeros(2, 8), "sigmoid").tolist() == pytest.approx([math.log(8)] * 2)
    # one expert far ahead: entropy near 0, and finite for a very negative sigmoid logit
    assert router_entropy(torch.tensor([[40.0, -40.0, -40.0]])).item() == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(router_entropy(torch.tensor([[40.0, -200.0]]), "sigmoid").item())


def test_dead_experts_counts_pairs_idle_long_enough():
    assert dead_experts(torch.tensor([[0, 3, 2], [5, 1, 3]]), after=3) == 3


class Router(nn.Module):
    """Top-k of a fixed [N, E] logit table handed in as the 'hidden states' (as transformers'
    routers return: logits [N, E], weights [N, k], experts [N, k])."""

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.zeros(3, 2))  # 3 experts (the monitor reads E from it)

    def forward(self, logits):
        weights, experts = logits.softmax(-1).topk(self.k, dim=-1)
        return logits, weights, experts


class Model(nn.Module):
    def __init__(self, layers: int = 2):
        super().__init__()
        self.routers = nn.ModuleList(Router() for _ in range(layers))

    def forward(self, logits, attention_mask=None):
        # logits [B, L, E] -> every router sees the B * L tokens flattened, as an MoE block does
        for router in self.routers:
            router(logits.reshape(-1, logits.shape[-1]))


def monitor_for(model: Model, dead_after: int = 2) -> ExpertLoadMonitor:
    routers = list(model.routers.named_children())
    return ExpertLoadMonitor(model, routers, num_experts=3, dead_after=dead_after)


def one_hot_logits(experts: list[list[int]]) -> torch.Tensor:
    """[B, L, 3] logits whose top-1 expert at (b, t) is experts[b][t]."""
    return torch.nn.functional.one_hot(torch.tensor(experts), 3).float() * 10


def test_counts_leave_out_padding_and_passes_without_gradient():
    model = Model()
    monitor = monitor_for(model)
    model.train()
    # row 0: experts 0, 0, 1; row 1: expert 2 then two padding tokens (routed to 0, not counted)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    model(one_hot_logits([[0, 0, 1], [2, 0, 0]]), attention_mask=mask)
    with torch.no_grad():  # a rollout or old-policy pass: not counted
        model(one_hot_logits([[1, 1, 1]]), attention_mask=torch.ones(1, 3))
    model.eval()  # eval mode under autograd is no update pass either
    model(one_hot_logits([[1, 1, 1]]), attention_mask=torch.ones(1, 3))
    assert monitor.counts.tolist() == [[2.0, 1.0, 1.0]] * 2
    m = monitor.step_metrics()
    # loads [2, 1, 1]: mean 4/3, max / mean 1.5; std sqrt(2/9), cv sqrt(2/9) / (4/3) = 0.3536
    assert m["moe/load_max_over_mean"] == pytest.approx(1.5)
    assert m["moe/load_cv"] == pytest.approx(math.sqrt(2 / 9) / (4 / 3))
    assert m["moe/layer_0/load_cv"] == m["moe/layer_1/load_cv"] == pytest.approx(0.35355, abs=1e-5)
    # one-hot logits x 10: softmax [e^10, 1, 1] / (e^10 + 2) per token
    p = torch.tensor([math.exp(10), 1.0, 1.0], dtype=torch.float64) / (math.exp(10) + 2)
    assert m["moe/router_entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)  # float32
    assert m["moe/dead_experts"] == 0.0


def test_a_continuation_pass_counts_the_new_tokens_of_a_mask_spanning_the_cache():
    model = Model(layers=1)
    monitor = monitor_for(model)
    # 2 rows of 2 new tokens after a 3-token cache: mask [2, 5]; row 1's last token is padding
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    model(one_hot_logits([[0, 1], [2, 2]]), attention_mask=mask)
    assert monitor.counts.tolist() == [[1.0, 1.0, 1.0]]


def test_dead_experts_after_n_steps_without_a_token_and_skipped_steps_do_not_count():
    model = Model(layers=2)
    monitor = monitor_for(model, dead_after=2)
    model.train()
    seen = []
    for step in range(4):
        if step != 2:  # step 2 makes no update pass (a skipped step)
            model(one_hot_logits([[0, 1]]), attention_mask=torch.ones(1, 2))
        seen.append(monitor.step_metrics())
    # expert 2 of both layers idle at steps 0, 1 (dead from the second), not advanced at step 2
    assert [m.get("moe/dead_experts") for m in seen] == [0.0, 2.0, None, 2.0]
    assert monitor.idle.tolist() == [[0, 0, 3], [0, 0, 3]]


def test_counts_are_summed_over_ranks_by_the_reducer():
    model = Model(layers=1)
    monitor = monitor_for(model)
    model(one_hot_logits([[0, 0]]), attention_mask=torch.ones(1, 2))

    def two_ranks(sums):  # a second rank saw the same: every sum doubles
        return {k: 2 * v for k, v in sums.items()}

    m = monitor.step_metrics(two_ranks)
    assert m["moe/load_max_over_mean"] == pytest.approx(3.0)  # [4, 0, 0]: mean 4/3
    assert monitor.counts.sum() == 0  # reset for the next step


def test_removed_hooks_count_nothing():
    model = Model(layers=1)
    monitor = monitor_for(model)
    monitor.remove()
    model(one_hot_logits([[0, 0]]), attention_mask=torch.ones(1, 2))
    assert monitor.step_metrics() == {}
