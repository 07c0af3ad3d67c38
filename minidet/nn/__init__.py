"""Layers: each keeps what its backward needs and returns the input gradient.

A layer owns `params` (name -> array) and `grads` (the same names);
`forward(x)` returns the output, `backward(dy)` returns dL/dx and fills `grads`.
"""
from minidet.nn.activation import ReLU
from minidet.nn.conv import Conv2d
from minidet.nn.dropout import Dropout
from minidet.nn.linear import Linear
from minidet.nn.pool import MaxPool2d
from minidet.nn.reshape import Flatten
from minidet.nn.roi_align import RoIAlign
from minidet.nn.roi_pool import RoIPool

__all__ = ["Conv2d", "MaxPool2d", "Linear", "ReLU", "Dropout", "Flatten", "RoIAlign", "RoIPool"]
