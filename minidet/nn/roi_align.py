"""RoIAlign as a layer: Mask R-CNN's bilinear, unrounded replacement for RoIPool."""
import numpy as np

from minidet.backend import get_array_module
from minidet.nn.layer import Layer
from minidet.ops.roi_align import roi_align, roi_align_backward


class RoIAlign(Layer):
    """y[r, c] = the average of bilinear samples of x[rois[r, 0], c] in each of the RoI's PH x PW bins
    (see minidet.ops.roi_align). aligned=True shifts by half a cell, so that a RoI covers the cells
    whose centres it covers; sampling_ratio points per bin and axis (adaptive when <= 0).

    Shapes: x (N, C, H, W), rois (R, 5) = [batch_index, x1, y1, x2, y2] in input-image pixels
    -> y (R, C, PH, PW). No parameters; the RoIs get no gradient (they are data, not outputs of the net).
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2, aligned=True):
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def settings(self):
        return self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned

    def forward(self, x, rois):
        self.rois = rois          # where each RoI's points were: the backward retraces them
        self.x_shape = x.shape
        return roi_align(x, rois, *self.settings())

    def backward(self, dy):
        if not self.needs_input_grad:
            return None
        # y is linear in x: each point's four cells get dy times the point's weight / points per bin.
        return roi_align_backward(dy, self.rois, self.x_shape, *self.settings())

    def input_keys(self, rois, dtype):
        """(R, 5) int64 rows, equal for two RoIs whose image and corners are equal in `dtype`: RoIAlign
        samples at the corners' exact positions, so only such RoIs read identical input for certain."""
        xp = get_array_module(rois)
        dtype = np.dtype(dtype)
        bits = rois[:, 1:5].astype(dtype).view(np.int32 if dtype == np.float32 else np.int64)
        return xp.concatenate([rois[:, :1].astype(xp.int64), bits.astype(xp.int64)], axis=1)
