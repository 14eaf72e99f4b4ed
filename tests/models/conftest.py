"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run the small CPU models on one thread: as fast for these sizes, and steadier on a
    shared, busy machine. The thread count is restored afterwards."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture()
def native_cpu_convolutions(monkeypatch):
    """Use PyTorch's native CPU convolutions: oneDNN spends ~50 ms building a kernel for each
    new convolution shape, which dominates tests with many tiny shapes (FCN, DeepLab)."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
