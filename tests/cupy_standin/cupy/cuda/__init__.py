"""cupy.cuda for the stand-in: one device, on which every kernel has finished when its launch returns.

Streams and events exist so that code written for CuPy's asynchronous copies runs: work "queued"
on a stream has already happened, an event is done once recorded. Pinned host memory is a buffer
that remembers it is pinned, so that a test can tell an asynchronous copy from a pageable one
(ndarray.set records which it got in `copies`).
"""
from . import runtime


class Device:
    def __init__(self, device=0):
        self.id = device

    def synchronize(self):
        """Nothing to wait for: kernels run synchronously on the CPU."""


class Stream:
    """A CUDA stream; `Stream.null` is the default one, and the current one unless another is in use."""

    def __init__(self, null=False, non_blocking=False):
        self.null = null

    def synchronize(self):
        """Its work is done: every launch ran to completion."""

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        """Later work on this stream waits for `event`, which has always happened here."""
        if not event.recorded:
            raise RuntimeError("cupy stand-in: waiting for an event that was never recorded")

    def __enter__(self):
        _current.append(self)
        return self

    def __exit__(self, *exc):
        _current.pop()

    def use(self):
        _current[:] = [self]
        return self


Stream.null = Stream(null=True)
_current = [Stream.null]


def get_current_stream():
    return _current[-1]


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        if not self.recorded:
            raise RuntimeError("cupy stand-in: synchronizing an event that was never recorded")

    @property
    def done(self):
        return self.recorded


class PinnedMemoryPointer(bytearray):
    """Page-locked host memory: a buffer (numpy.frombuffer reads it) known to be pinned."""


def alloc_pinned_memory(size):
    return PinnedMemoryPointer(int(size))


def is_pinned(array):
    """Whether a numpy array's memory is (a view of) pinned memory from alloc_pinned_memory."""
    base = array
    while base is not None:
        if isinstance(base, PinnedMemoryPointer):
            return True
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return False
