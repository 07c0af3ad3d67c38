"""Truncated SVD of the fully connected layers (Fast R-CNN, section 3.1).

At test time a Fast R-CNN spends much of its time in fc6 and fc7, because they run once per RoI.
A weight W (out, in) is factored as W ~ U_t S_t V_t^T, keeping the t largest singular values, and
the layer y = x W^T + b becomes two thinner ones: first h = x (S_t V_t^T)^T without bias, then
y = h U_t^T + b with the original bias. The cost per row falls from in x out to t (in + out)
multiply-adds: for VGG16's fc6 (25088 -> 4096) at t = 1024, 103M -> 30M.

Both factors live in one layer, TruncatedLinear, that stands where the fc stood: the network's
list of layers and its names stay as they were ("fc6", "fc7"), the forward and backward read the
same, and the bias is stored once. Its backward is the chain rule through the two products.
"""
import time

import numpy as np
import scipy.linalg

from minidet.backend import asnumpy, get_array_module, is_gpu_array, require_cupy
from minidet.nn.layer import Layer
from minidet.ops.softmax import softmax


class TruncatedLinear(Layer):
    """y = (x SV^T) U^T + b, a fully connected layer of rank t.

    x (N, in) -> h = x SV^T (N, t) -> y = h U^T + b (N, out);
    params "weight_sv" (t, in) = S_t V_t^T, "weight_u" (out, t) = U_t, "bias" (out,).
    `frozen` and `needs_input_grad` as in Linear.
    """

    def __init__(self, weight_sv, weight_u, bias):
        super().__init__()
        if weight_sv.shape[0] != weight_u.shape[1] or weight_u.shape[0] != bias.shape[0]:
            raise ValueError(f"factor shapes do not chain: weight_sv {weight_sv.shape}, weight_u "
                             f"{weight_u.shape}, bias {bias.shape}")
        self.params = {"weight_sv": weight_sv, "weight_u": weight_u, "bias": bias}

    @property
    def rank(self):
        return self.params["weight_sv"].shape[0]

    def forward(self, x):
        self.x = x                               # dSV = dh^T x
        self.h = x @ self.params["weight_sv"].T  # dU = dy^T h
        y = self.h @ self.params["weight_u"].T
        y += self.params["bias"]
        return y

    def backward(self, dy):
        """dU = dy^T h, db = sum_n dy, dh = dy U, dSV = dh^T x, dx = dh SV.  dy (N, out) -> dx (N, in)."""
        if self.frozen and not self.needs_input_grad:
            self.grads = {}
            return None
        dh = dy @ self.params["weight_u"]
        self.grads = {} if self.frozen else {
            "weight_sv": dh.T @ self.x, "weight_u": dy.T @ self.h, "bias": dy.sum(axis=0)}
        return dh @ self.params["weight_sv"] if self.needs_input_grad else None


def truncated_svd(weight, rank):
    """The rank-t factors of W (out, in), t = min(rank, out, in): (SV (t, in), U (out, t), energy).

    U @ SV is the best rank-t approximation of W (in the Frobenius norm); `energy` is the fraction of
    sum(s_i^2) that the kept singular values hold. Computed on the CPU, in W's float type. For
    out <= in: the t leading eigenvectors of W W^T (out x out; only those t are computed, far
    cheaper than an SVD of 4096 x 25088), then SV = U^T W, so that at full rank U @ SV gives W
    back up to rounding. Otherwise by numpy's SVD.
    """
    w = asnumpy(weight)
    out_features, in_features = w.shape
    t = int(min(rank, out_features, in_features))
    if t < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    total = float(np.einsum("ij,ij->", w, w, dtype=np.float64))     # sum of all s_i^2
    if out_features <= in_features:
        # eigenvalues ascending: the last t are the largest s_i^2, their vectors the columns of U_t
        squares, u = scipy.linalg.eigh(w @ w.T, subset_by_index=[out_features - t, out_features - 1],
                                       driver="evr")
        squares, u = np.clip(squares[::-1], 0, None), np.ascontiguousarray(u[:, ::-1]).astype(w.dtype)
        sv = u.T @ w                              # S_t V_t^T = U_t^T W
    else:
        u_full, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        squares = s[:t] ** 2
        u = np.ascontiguousarray(u_full[:, :t]).astype(w.dtype)
        sv = (s[:t, None] * vt[:t]).astype(w.dtype)
    energy = min(float(squares.sum()) / total, 1.0) if total > 0 else 1.0
    return sv, u, energy


def truncate_linear(linear, rank):
    """A TruncatedLinear of rank t approximating a Linear (on the Linear's device); and a report."""
    xp = get_array_module(linear.params["weight"])
    out_features, in_features = linear.params["weight"].shape
    sv, u, energy = truncated_svd(linear.params["weight"], rank)
    layer = TruncatedLinear(xp.asarray(sv), xp.asarray(u), linear.params["bias"].copy())
    t = layer.rank
    report = {"in": int(in_features), "out": int(out_features), "rank": int(t),
              "energy_kept": energy, "macs_before": int(in_features * out_features),
              "macs_after": int(t * (in_features + out_features))}
    return layer, report


def _synchronize(x):
    if is_gpu_array(x):
        require_cupy().cuda.Device().synchronize()


def time_fc_part(model, features, repeat=3):
    """Median seconds of the fc part (the head and the two outputs) on pooled RoI features; and its outputs."""
    times = []
    outputs = None
    for _ in range(repeat + 1):   # the first run warms caches and is not counted
        _synchronize(features)
        start = time.perf_counter()
        x = model.head.forward(features)
        outputs = model.cls_score.forward(x), model.bbox_pred.forward(x)
        _synchronize(outputs[0])
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])), outputs


def compress_fast_rcnn(model, fc6_rank=1024, fc7_rank=256, images=None, rois=None, repeat=3):
    """Replace model's fc6 and fc7 by TruncatedLinear layers of the given ranks; return a report.

    The report holds, per layer, the rank, the multiply-adds per RoI before and after and the
    singular-value energy kept, and for the fc part the ratio of multiply-adds. Given images
    (N, 3, H, W) and rois (R, 5), it also measures the fc part's time before and after
    (fc_seconds_*, fc_speedup) and the change of the outputs: the largest change of a softmax
    score, of a bbox_pred delta, and the fraction of RoIs whose top class stays the same.
    """
    measure = images is not None and rois is not None
    report = {}
    if measure:
        rois = get_array_module(images).asarray(rois)
        features = model.roi_pool.forward(model.trunk.forward(images), rois)
        before_s, (scores_before, bbox_before) = time_fc_part(model, features, repeat)
    for name, rank in (("fc6", fc6_rank), ("fc7", fc7_rank)):
        layer = model.layer(name)
        if isinstance(layer, TruncatedLinear):
            raise ValueError(f"{name} is already truncated (rank {layer.rank})")
        truncated, report[name] = truncate_linear(layer, rank)
        model.replace_layer(name, truncated)
    head_macs = sum(int(np.prod(layer.params["weight"].shape)) for layer in (model.cls_score, model.bbox_pred))
    report["fc_macs_before"] = report["fc6"]["macs_before"] + report["fc7"]["macs_before"] + head_macs
    report["fc_macs_after"] = report["fc6"]["macs_after"] + report["fc7"]["macs_after"] + head_macs
    report["fc_macs_ratio"] = report["fc_macs_before"] / report["fc_macs_after"]
    if measure:
        after_s, (scores_after, bbox_after) = time_fc_part(model, features, repeat)
        p_before, p_after = softmax(scores_before), softmax(scores_after)
        report.update({
            "fc_seconds_before": before_s, "fc_seconds_after": after_s, "fc_speedup": before_s / after_s,
            "num_rois": int(len(rois)),
            "max_abs_score_change": float(asnumpy(abs(p_after - p_before).max())),
            "max_abs_bbox_pred_change": float(asnumpy(abs(bbox_after - bbox_before).max())),
            "top_class_agreement": float(asnumpy((p_after.argmax(axis=1) == p_before.argmax(axis=1)).mean())),
        })
    return report
