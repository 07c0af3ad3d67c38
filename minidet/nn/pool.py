"""Max pooling: the forward keeps the argmax, the backward routes dy through it."""
from minidet.nn.layer import Layer
from minidet.ops.im2col import pair
from minidet.ops.maxpool import max_pool_backward, max_pool_forward


class MaxPool2d(Layer):
    """y = the maximum of each window of x, kept with its argmax. Shapes: (N, C, H, W) -> (N, C, OH, OW).

    The windows, their count in ceil mode (Caffe's; VGG16 pools 2x2, stride 2, in ceil mode) and the
    ties are those of minidet.ops.maxpool. Backward: dL/dx at each window's argmax += dL/dy; every
    other pixel of a window gets nothing.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.ceil_mode = bool(ceil_mode)
        self.argmax = None
        self.x_shape = None

    def forward(self, x):
        y, self.argmax = max_pool_forward(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        self.x_shape = x.shape
        return y

    def backward(self, dy):
        return max_pool_backward(dy, self.argmax, self.x_shape, self.kernel_size, self.stride, self.padding)
