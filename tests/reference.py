"""The one helper that compares minidet with PyTorch, when torch is installed.

    torch = require_torch()          # skips the calling test without torch
    t = as_torch(x, grad=True)       # a float64/float32 tensor that shares x's values
    assert_close(minidet_value, t)   # compares with a tensor or an array
"""
import numpy as np
import pytest


def require_torch():
    return pytest.importorskip("torch")


def require_torchvision():
    require_torch()
    try:
        import torchvision.ops  # noqa: F401

        return __import__("torchvision")
    except Exception as err:  # not installed, or its compiled ops do not load
        pytest.skip(f"torchvision unavailable: {err}")


def as_torch(x, grad=False):
    torch = require_torch()
    t = torch.from_numpy(np.ascontiguousarray(x).copy())
    return t.requires_grad_(grad) if t.is_floating_point() else t


def to_numpy(t):
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def assert_close(actual, expected, rtol=None, atol=None):
    actual, expected = to_numpy(actual), to_numpy(expected)
    if rtol is None:
        rtol = 1e-4 if actual.dtype == np.float32 else 1e-10
    if atol is None:
        atol = 1e-5 if actual.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
