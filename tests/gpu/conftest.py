import pytest

from minidet.backend import gpu_available

if not gpu_available():

    def pytest_collection_modifyitems(config, items):
        skip = pytest.mark.skip(reason="no CuPy or no CUDA GPU")
        for item in items:
            if "tests/gpu" in str(item.fspath).replace("\\", "/"):
                item.add_marker(skip)
