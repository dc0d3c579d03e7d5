"""PromptSampler: per-epoch permutations, batches across epochs, exact resume."""

from __future__ import annotations

import pytest
import torch

from vlrl.training.sampler import PromptSampler


def _epoch(n, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def test_each_epoch_is_the_seeded_permutation_and_batches_run_across_epochs():
    sampler = PromptSampler(5, seed=3)
    drawn = [i for _ in range(4) for i in sampler.next_batch(3)]  # 12 = 2 epochs + 2
    assert drawn == _epoch(5, 3) + _epoch(5, 4) + _epoch(5, 5)[:2]
    assert sorted(drawn[:5]) == list(range(5)) and sorted(drawn[5:10]) == list(range(5))
    assert drawn[:5] != drawn[5:10]  # reshuffled each epoch
    assert sampler.state_dict() == {"epoch": 2, "offset": 2, "seed": 3, "n": 5, "shuffle": True}


def test_no_shuffle_is_the_file_order():
    sampler = PromptSampler(3, seed=0, shuffle=False)
    assert sampler.next_batch(7) == [0, 1, 2, 0, 1, 2, 0]


def test_batch_larger_than_the_data_set():
    assert sorted(PromptSampler(2, seed=0).next_batch(6)) == [0, 0, 0, 1, 1, 1]


def test_same_sequence_whatever_the_batch_size():
    a, b = PromptSampler(7, seed=1), PromptSampler(7, seed=1)
    assert a.next_batch(12) == b.next_batch(4) + b.next_batch(4) + b.next_batch(4)


def test_resume_continues_exactly():
    run = PromptSampler(6, seed=9)
    run.next_batch(4)
    state = run.state_dict()
    expected = run.next_batch(10)
    resumed = PromptSampler(6, seed=9)
    resumed.load_state_dict(state)
    assert resumed.next_batch(10) == expected


@pytest.mark.parametrize(("n", "seed"), [(7, 9), (6, 1)])
def test_resume_with_other_data_or_seed_names_both(n, seed):
    state = PromptSampler(6, seed=9).state_dict()
    with pytest.raises(ValueError) as err:
        PromptSampler(n, seed=seed).load_state_dict(state)
    assert "'n': 6, 'seed': 9" in str(err.value)
    assert f"'n': {n}, 'seed': {seed}" in str(err.value)


def test_empty_data_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        PromptSampler(0, seed=0)
