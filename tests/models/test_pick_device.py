"""A CUDA device asked for on a machine without CUDA is a one-line error naming the setting."""

import pytest
import torch

from vlrl.models.loading import pick_device


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_train_device(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as info:
        pick_device(name)
    assert str(info.value) == f"train.device={name}: CUDA is not available on this machine; use cpu or auto"


def test_other_callers_name_their_own_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^--device=cuda: CUDA is not available"):
        pick_device("cuda", setting="--device")


def test_auto_and_cpu_need_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
