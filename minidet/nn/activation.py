"""Activation functions."""
from minidet.backend import get_array_module
from minidet.nn.layer import Layer


class ReLU(Layer):
    """y = max(x, 0). Shapes: any -> same.

    The backward needs only where x > 0, which is where y > 0: the layer keeps y, the array it
    returns (which the next layer usually keeps anyway), not a mask of its own, and keeps nothing
    in test mode (`training = False`) or when no backward will reach it (`needs_input_grad = False`).

    inplace=True writes y over x, and dx over dy in the backward. That is safe only where nothing
    else reads x after this layer and nothing else reads dy after it: a convolution's output that
    feeds this ReLU alone (VGG16's trunk), not an array that another branch or a residual sum also
    reads, and not an input the caller still needs.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)
        self.y = None

    def forward(self, x):
        y = get_array_module(x).maximum(x, 0, out=x if self.inplace else None)
        self.y = y if self.training and self.needs_input_grad else None   # all the backward needs
        return y

    def backward(self, dy):
        if self.y is None:
            raise RuntimeError("ReLU.backward needs a forward in training mode first")
        xp = get_array_module(dy)
        return xp.multiply(dy, self.y > 0, out=dy if self.inplace else None)   # dy/dx = 1 where x > 0
