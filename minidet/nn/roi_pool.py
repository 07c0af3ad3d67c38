"""RoI max pooling as a layer: Fast R-CNN's replacement for VGG16's pool5."""
import numpy as np

from minidet.backend import get_array_module
from minidet.ops.roi_pool import roi_cells, roi_pool, roi_pool_backward
from minidet.nn.layer import Layer


class RoIPool(Layer):
    """y[r, c] = max-pool of x[rois[r, 0], c] over the RoI's PH x PW grid of bins (see minidet.ops.roi_pool).

    Shapes: x (N, C, H, W), rois (R, 5) = [batch_index, x1, y1, x2, y2] in input-image pixels
    -> y (R, C, PH, PW). No parameters; the RoIs get no gradient (they are data, not outputs of the net).
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1 / 16):
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, x, rois):
        self.argmax = None        # last call's: free for reuse unless a caller holds it
        out = None
        if get_array_module(x) is np:   # into last call's arrays if they are free (Layer.reusable_array)
            shape = (len(rois), x.shape[1]) + self.output_size
            out = self.reusable_array("y", shape, x.dtype), self.reusable_array("argmax", shape, np.int32)
        y, self.argmax = roi_pool(x, rois, self.output_size, self.spatial_scale, out=out)
        self.rois = rois          # its batch index column routes each RoI's gradient to its image
        self.x_shape = x.shape
        return y

    def backward(self, dy):
        # y = x at argmax, so dL/dx at a cell = sum of dy over the bins whose argmax it is.
        return roi_pool_backward(dy, self.argmax, self.x_shape, self.rois)

    def input_keys(self, rois, dtype):
        """(R, 5) int64 rows, equal for two RoIs exactly when they pool identical input (roi_cells)."""
        return roi_cells(rois, self.spatial_scale, dtype)
