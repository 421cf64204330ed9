"""Which device a training rank runs on (asrlib/device.py)."""
import pytest
import torch

from asrlib.device import pick_device


def test_pick_device_offsets_cuda_by_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert pick_device("cuda", 3) == torch.device("cuda", 3)
    assert pick_device("auto", 5) == torch.device("cuda", 5)
    assert pick_device("cuda:2", 0) == torch.device("cuda", 2)
    assert pick_device("cuda:4", 3) == torch.device("cuda", 7)
    with pytest.raises(RuntimeError, match="needs GPU 9"):
        pick_device("cuda:2", 7)
    assert pick_device("cpu", 3) == torch.device("cpu")
