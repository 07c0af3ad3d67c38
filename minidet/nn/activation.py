"""Activation functions."""
from minidet.nn.layer import Layer


class ReLU(Layer):
    """y = max(x, 0). Shapes: any -> same."""

    def __init__(self):
        super().__init__()

    def forward(self, x):
        self.mask = x > 0          # all the backward needs
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask      # dy/dx = 1 where x > 0, else 0
