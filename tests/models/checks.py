"""Checks that several architecture tests make: forward and backward, dropout, divisor errors.

Each one asserts what its docstring says; the test around it adds the checks that are
particular to its model (which layer must get a gradient, which message names the model).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn


def assert_forward_backward(model: nn.Module, x: torch.Tensor, shape: tuple[int, ...]):
    """``model(x)`` is float32, finite, not constant and of ``shape``; backpropagating
    mean(logits^2) gives every parameter a finite gradient. Returns the logits."""
    logits = model(x)
    assert logits.shape == shape
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.std() > 0
    logits.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return logits


def assert_eval_deterministic_train_random(model: nn.Module, x: torch.Tensor) -> None:
    """Two passes of ``x`` agree exactly in eval mode and differ in train mode (dropout)."""
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)  # dropout draws from the global generator
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def assert_divisor_error(model: nn.Module, x: torch.Tensor, padded: tuple[int, ...]) -> None:
    """``model(x)`` is refused with a message that names the model's divisor, the spatial
    shape of ``x`` and the ``padded`` shape to use instead."""
    got = re.escape(f"got {tuple(x.shape[2:])}; pad the input to {padded}")
    with pytest.raises(ValueError, match=f"multiple of {model.divisor}.*{got}"):
        model(x)
