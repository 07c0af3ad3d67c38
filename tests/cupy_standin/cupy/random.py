"""cupy.random for the stand-in: numpy's generator, its draws on the device (not CuPy's streams)."""
import numpy

from ._array import on_device


class Generator:
    def __init__(self, seed=None):
        self._generator = numpy.random.default_rng(seed)

    def random(self, size=None, dtype=numpy.float64):
        """Uniform draws in [0, 1) of the given shape and dtype, as a cupy array."""
        return on_device(numpy.asarray(self._generator.random(size, dtype=dtype)))


def default_rng(seed=None):
    return Generator(seed)
