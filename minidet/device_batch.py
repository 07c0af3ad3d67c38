"""A training batch onto the device, and the iteration's logged numbers back, without stalling the host.

    stage = DeviceBatches("gpu")            # once
    arrays = stage(batch)                   # {name: device array} for the loader's {name: numpy array}
    ...forward, loss, backward, step...
    values = host_values(loss=loss, **parts)   # {name: float}, the iteration's one device -> host copy

A copy from pageable host memory is synchronous: CUDA first copies it into a pinned buffer of its
own while the host waits. DeviceBatches keeps pinned buffers (two per array name, used in turn)
and copies each array into one on the host, then onto the device asynchronously, on the current
stream, so that the copy queues behind the previous iteration's kernels instead of waiting for
them. Before a pinned buffer is written again, the host waits for the event recorded after its
last copy, which finished an iteration ago. The copies stay on the current stream rather than a
side stream: the device arrays come from CuPy's memory pool, which hands a stream memory that the
stream's own queued kernels may still be using, so a side stream would first have to wait for the
current one anyway.

host_values stacks the scalars on the device and copies them in one transfer: every float() of a
cupy scalar waits for the device, and the loss and its parts read one by one are four waits.

On the CPU, DeviceBatches returns the batch's arrays as they are and host_values reads floats.
"""
import numpy as np

from minidet.backend import get_array_module, require_cupy

BATCH_KEYS = ("images", "rois", "labels", "bbox_targets", "bbox_weights")


class DeviceBatches:
    """Callable: batch {name: numpy array} -> {name: array on `device`} for the names in `keys`."""

    def __init__(self, device, keys=BATCH_KEYS):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.device, self.keys = device, tuple(keys)
        self._pinned = {}          # (name, slot) -> (pinned memory, its capacity in bytes)
        self._events = [None, None]
        self._slot = 0

    def __call__(self, batch):
        missing = [k for k in self.keys if k not in batch]
        if missing:
            raise KeyError(f"the batch has no {missing} (it has {sorted(batch)})")
        if self.device == "cpu":
            return {k: np.asarray(batch[k]) for k in self.keys}
        cp = require_cupy()
        slot, self._slot = self._slot, 1 - self._slot
        if self._events[slot] is not None:
            self._events[slot].synchronize()       # that buffer's copies have ended: it may be rewritten
        stream = cp.cuda.get_current_stream()
        arrays = {}
        for name in self.keys:
            host = np.ascontiguousarray(batch[name])
            staged = self._staging(cp, name, slot, host)
            np.copyto(staged, host)
            arrays[name] = cp.empty(host.shape, dtype=host.dtype)
            arrays[name].set(staged, stream=stream)
        event = cp.cuda.Event()
        event.record(stream)
        self._events[slot] = event
        return arrays

    def _staging(self, cp, name, slot, host):
        """A pinned host array shaped as `host`, in the buffer kept for (name, slot), grown as needed."""
        memory, capacity = self._pinned.get((name, slot), (None, 0))
        if capacity < host.nbytes:
            capacity = max(host.nbytes, 2 * capacity, 1)
            memory = cp.cuda.alloc_pinned_memory(capacity)
            self._pinned[(name, slot)] = (memory, capacity)
        return np.frombuffer(memory, host.dtype, host.size).reshape(host.shape)


def host_values(**scalars):
    """{name: float} of 0-d arrays (or numbers) that live on one device, read in one copy."""
    arrays = [v for v in scalars.values() if hasattr(v, "dtype")]
    xp = get_array_module(*arrays)
    if xp is np or not arrays:
        return {k: float(v) for k, v in scalars.items()}
    stacked = xp.stack([xp.asarray(v, dtype=xp.float64).reshape(()) for v in scalars.values()])
    return dict(zip(scalars, (float(v) for v in stacked.get())))
