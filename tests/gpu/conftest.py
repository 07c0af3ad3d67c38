"""tests/gpu run where minidet.backend finds a working GPU (or the CPU stand-in for CuPy).

Elsewhere every test here is skipped with the backend's one-line reason (CuPy, driver, GPU,
NVRTC or headers missing). With MINIDET_REQUIRE_GPU=1 a missing GPU is an error in every test
instead, so that a machine meant to test the GPU cannot pass by skipping.
"""
import os

import pytest

from minidet.backend import gpu_unavailable_reason


def gpu_required():
    return os.environ.get("MINIDET_REQUIRE_GPU", "0") not in ("", "0")


@pytest.fixture(scope="session", autouse=True)
def working_gpu():
    """Runs before the tests' own fixtures (session scope): skip, or fail when a GPU is required."""
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    if gpu_required():
        pytest.fail(f"MINIDET_REQUIRE_GPU=1 but {reason}", pytrace=False)
    pytest.skip(reason)
