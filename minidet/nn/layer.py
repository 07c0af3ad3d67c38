"""The interface every layer has, and a sequence of layers that is itself a layer.

A layer's forward keeps what its backward needs; its backward takes dL/dy and returns dL/dx:

    y = layer.forward(x)          # fills what the backward reads (named attributes, never tuples)
    dx = layer.backward(dy)       # fills layer.grads; returns None when no input gradient is needed

State, not arguments, says how a layer runs (as Chainer's `config.train`):
    params            {name: array}: the parameters themselves (updated in place by the optimiser)
    grads             {name: array}: dL/dparam after backward, the same names; empty while frozen
    frozen            True: the backward computes no parameter gradient
    needs_input_grad  False: the backward computes no dL/dx and returns None (the lowest trained
                      layer of a network, and every frozen one below it)
    training          set by train() / eval(); only layers that differ between the two read it (Dropout;
                      Conv2d and Linear, which keep their input for the weight gradient in training only)
"""
import sys

import numpy as np


class Layer:
    """Base of every layer: empty params and grads, trained, input gradient wanted, training mode."""

    def __init__(self):
        self.params, self.grads = {}, {}
        self.frozen = False
        self.needs_input_grad = True
        self.training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def train(self, mode=True):
        """Training mode (dropout draws masks) when mode is True, test mode otherwise; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def named_layers(self, name=""):
        """[(name, layer)] of the layers inside this one, in forward order: itself, for a single layer."""
        return [(name, self)]

    def reusable_array(self, key, shape, dtype):
        """A NumPy array of `shape` and `dtype` for this layer to write one of its outputs into: the
        array it handed out under `key` last time, if nothing else refers to it any more, else a new one.

        Why: a large new array is new pages, which the kernel maps and zeroes on first write. RoI
        pooling's output and argmax at 1000 RoIs (2 x 100 MB) took four to six times the pooling
        itself inside a test forward (docs/PERFORMANCE.md, "Fresh pages"). An array that a caller
        still holds, or a view of it, is never written into: its reference count says so.
        """
        cache = self.__dict__.setdefault("_reusable", {})
        array = cache.pop(key, None)
        # A free array is referred to by `array` here and by getrefcount's own argument: 2.
        if array is None or array.shape != tuple(shape) or array.dtype != dtype or sys.getrefcount(array) > 2:
            array = None                  # let it go before its successor is allocated
            array = np.empty(shape, dtype)
        cache[key] = array
        return array


class Sequential(Layer):
    """y = layer_n(... layer_1(x)); its backward runs the layers in reverse and stops at the first
    that returns None (the lowest trained layer: nothing below it needs a gradient).

    layers: [(name, layer)]. Parameters are named "layer name.parameter name" ("conv3_1.weight").
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = list(layers)

    def forward(self, x):
        for _, layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for _, layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:
                return None
        return dy

    def train(self, mode=True):
        super().train(mode)
        for _, layer in self.layers:
            layer.train(mode)
        return self

    def named_layers(self, name=""):
        """[(name, layer)] of the layers inside, in forward order, nested sequences flattened."""
        return [pair for child_name, child in self.layers for pair in child.named_layers(child_name)]

    def __getitem__(self, name):
        for layer_name, layer in self.layers:
            if layer_name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {[n for n, _ in self.layers]}")

    def __setitem__(self, name, new_layer):
        index = [n for n, _ in self.layers].index(name)
        self.layers[index] = (name, new_layer)
