"""Inverted dropout."""
from minidet.backend import get_array_module
from minidet.nn.layer import Layer


class Dropout(Layer):
    """y = x * mask / (1 - p) in training mode, y = x in test mode (`training`). Shapes: any -> same.

    Each unit is kept with probability 1 - p, and kept units are scaled by 1 / (1 - p) so
    that E[y] = x and the test-time network needs no rescaling. The masks come from the
    layer's own generator, seeded by `seed`: the same seed gives the same sequence of masks.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.seed = p, seed
        self.generators = {}  # numpy or cupy -> its own Generator, made from seed on first use
        self.mask = None

    def forward(self, x):
        if not self.training:
            self.mask = None
            return x
        keep = self.generator(x).random(x.shape, dtype=x.dtype) >= self.p
        self.mask = keep.astype(x.dtype) / (1 - self.p)  # the whole derivative of y by x
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask

    def generator(self, x):
        """The layer's generator for x's module (numpy or cupy), made from `seed` on first use. On the
        GPU CuPy sizes its generator's state by the GPU's number of multiprocessors, so the same seed
        gives the same masks on the same GPU model only (resuming is exact there and on the CPU)."""
        xp = get_array_module(x)
        if xp not in self.generators:
            self.generators[xp] = xp.random.default_rng(self.seed)
        return self.generators[xp]
