"""Reshaping layers."""
import math
from minidet.nn.layer import Layer


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), C-major as in Caffe and torchvision; any (N, ...) works."""

    def __init__(self):
        super().__init__()

    def forward(self, x):
        self.shape = x.shape       # the backward undoes the reshape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy):
        return dy.reshape(self.shape)
