"""Reshaping layers."""
import math


class Flatten:
    """(N, C, H, W) -> (N, C*H*W), C-major as in Caffe and torchvision; any (N, ...) works."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x):
        self.shape = x.shape       # the backward undoes the reshape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy):
        return dy.reshape(self.shape)
