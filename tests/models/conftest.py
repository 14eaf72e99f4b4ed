"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_torch_thread):
    """Run the small CPU models on one thread (``one_torch_thread``, tests/conftest.py)."""


@pytest.fixture()
def native_cpu_convolutions(monkeypatch):
    """Use PyTorch's native CPU convolutions: oneDNN spends ~50 ms building a kernel for each
    new convolution shape, which dominates tests with many tiny shapes (FCN, DeepLab)."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
