"""minidet.device_batch on the CPU: batches pass through as they are, logged values are floats."""
import numpy as np
import pytest

from minidet.device_batch import BATCH_KEYS, DeviceBatches, host_values


def test_cpu_batches_pass_through_and_missing_names_are_reported():
    batch = {name: np.arange(6.0).reshape(2, 3) + k for k, name in enumerate(BATCH_KEYS)}
    staged = DeviceBatches("cpu")(batch)
    assert sorted(staged) == sorted(BATCH_KEYS)
    assert all(staged[name] is batch[name] for name in BATCH_KEYS)
    with pytest.raises(KeyError, match="rois"):
        DeviceBatches("cpu")({k: v for k, v in batch.items() if k != "rois"})
    with pytest.raises(ValueError, match="device"):
        DeviceBatches("tpu")


def test_host_values_reads_numpy_scalars_and_numbers_as_floats():
    values = host_values(loss=np.float32(1.25), accuracy=np.asarray(0.5), lr=0.001)
    assert values == {"loss": 1.25, "accuracy": 0.5, "lr": 0.001}
    assert all(type(v) is float for v in values.values())
