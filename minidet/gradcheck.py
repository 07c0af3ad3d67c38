"""Gradient checking: every hand-written backward against central finite differences.

    errors = check_layer(Linear(5, 3, dtype=np.float64), x)   # {"input0": 2e-11, "weight": ..., "bias": ...}

A backward is right when every relative error is below 1e-6 in float64.
`minidet gradcheck [LAYER]` checks every layer and loss of minidet and prints a table.
"""
import argparse
import importlib.util
import sys

import numpy as np

from minidet.backend import asnumpy, get_array_module
from minidet.losses import fast_rcnn_loss, smooth_l1_loss, softmax_log_loss
from minidet.nn.activation import ReLU
from minidet.nn.dropout import Dropout
from minidet.nn.linear import Linear
from minidet.nn.reshape import Flatten

TOLERANCE = 1e-6


def numerical_gradient(f, x, eps=1e-6):
    """df/dx of a scalar function by central differences, one element at a time:

    grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).   x (any shape, float64) -> grad (same shape).
    x is perturbed in place and restored, so f may read it under another name (a layer's params).
    """
    if x.dtype != np.float64:
        raise TypeError(f"numerical_gradient needs float64 (eps={eps} drowns in float32 rounding), got {x.dtype}")
    grad = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        old = float(x[i])
        x[i] = old + eps
        up = float(f(x))
        x[i] = old - eps
        down = float(f(x))
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def relative_error(a, b):
    """max |a - b| / max(|a| + |b|): 0 when equal, 1 when opposite; arrays of any module and shape."""
    a, b = asnumpy(a).astype(np.float64), asnumpy(b).astype(np.float64)
    scale = np.max(np.abs(a) + np.abs(b), initial=0.0)
    return float(np.max(np.abs(a - b), initial=0.0) / max(scale, np.finfo(np.float64).tiny))


def check_layer(layer, *inputs, wrt=(0,), forward_kwargs=None, seed=0):
    """Relative errors of layer.backward against finite differences of L = sum(forward(*inputs) * dy).

    dy ~ N(0, 1) is drawn with `seed`. Checked: the inputs whose indices are in `wrt` (the first by
    default: RoIPool.forward(x, rois) has no gradient for rois; a backward that returns a tuple gives
    one gradient per input) and every parameter (so not a frozen layer). Inputs and params
    must be float64.
    Returns {"input0": err, ..., "weight": err, ...}.
    """
    kwargs = forward_kwargs or {}
    y = layer.forward(*inputs, **kwargs)
    xp = get_array_module(y)
    dy = xp.asarray(np.random.default_rng(seed).standard_normal(y.shape))
    dxs = layer.backward(dy)
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    # copies: a layer may reuse its buffers on the next call
    analytic = {f"input{i}": asnumpy(dxs[i]).copy() for i in wrt}
    analytic |= {name: asnumpy(layer.grads[name]).copy() for name in layer.params}

    def loss(_):
        return xp.sum(layer.forward(*inputs, **kwargs) * dy)

    variables = {f"input{i}": inputs[i] for i in wrt} | layer.params
    return {name: relative_error(analytic[name], numerical_gradient(loss, x)) for name, x in variables.items()}


def check_loss(loss_fn, *inputs, wrt=(0,)):
    """Relative errors of a loss's own gradients, for loss_fn(*inputs) -> (loss, dinput0, dinput1, ...).

    Returns {"input0": err, ...} for the inputs whose indices are in `wrt` (float64 arrays).
    """
    _, *grads = loss_fn(*inputs)
    analytic = [asnumpy(g).copy() for g in grads]

    def loss(_):
        return loss_fn(*inputs)[0]

    return {f"input{i}": relative_error(analytic[i], numerical_gradient(loss, inputs[i])) for i in wrt}


class FixedMaskDropout(Dropout):
    """Dropout that draws the same mask on every forward: finite differences need one fixed function."""

    def forward(self, x):
        self.generators.clear()  # back to the seed's first mask
        return super().forward(x)


# ---- the cases of `minidet gradcheck`: each function(rng, seed) -> (shapes, {quantity: error}) ----

def _layer_case(layer, *inputs, seed):
    errors = check_layer(layer, *inputs, seed=seed)
    shapes = ", ".join(str(x.shape) for x in inputs)
    return f"{shapes} -> {layer.forward(*inputs).shape}", errors


def _loss_case(loss_fn, *inputs, wrt=(0,)):
    shapes = ", ".join(str(x.shape) for x in inputs[:2])
    return f"{shapes} -> ()", check_loss(loss_fn, *inputs, wrt=wrt)


def _distinct(rng, shape):
    """float64 values of a permutation: every pooling window has a single maximum."""
    return rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64)


def _linear(rng, seed):
    return _layer_case(Linear(5, 3, np.float64, rng), rng.standard_normal((4, 5)), seed=seed)


def _relu(rng, seed):
    x = rng.standard_normal((3, 4, 5))
    return _layer_case(ReLU(), x + 0.1 * np.sign(x), seed=seed)  # away from the kink at 0


def _dropout(rng, seed):
    return _layer_case(FixedMaskDropout(0.5, seed), rng.standard_normal((4, 6)), seed=seed)


def _flatten(rng, seed):
    return _layer_case(Flatten(), rng.standard_normal((2, 3, 2, 2)), seed=seed)


def _softmax_log_loss(rng, seed):
    return _loss_case(softmax_log_loss, 3 * rng.standard_normal((6, 4)), rng.integers(0, 4, 6))


def _smooth_l1_loss(rng, seed):
    pred, target, weights = 2 * rng.standard_normal((6, 8)), rng.standard_normal((6, 8)), rng.random((6, 8))
    return _loss_case(smooth_l1_loss, pred, target, weights, 6)


def _fast_rcnn_loss(rng, seed, num_rois=6, num_classes=3):
    labels = rng.integers(0, num_classes, num_rois)
    bbox_weights = np.zeros((num_rois, 4 * num_classes))
    columns = 4 * labels[:, None] + np.arange(4)  # the 4 columns of each RoI's class
    bbox_weights[np.arange(num_rois)[:, None], columns] = labels[:, None] > 0  # background regresses nothing
    cls_score, bbox_pred, bbox_targets = (rng.standard_normal((num_rois, k * num_classes)) for k in (1, 4, 4))
    return _loss_case(fast_rcnn_loss, cls_score, bbox_pred, labels, bbox_targets, bbox_weights, wrt=(0, 1))


def _conv2d(rng, seed):
    from minidet.nn.conv import Conv2d

    conv = Conv2d(2, 3, 3, stride=1, padding=1, dtype=np.float64, rng=rng)
    conv.params["bias"][:] = rng.standard_normal(3)
    return _layer_case(conv, rng.standard_normal((2, 2, 5, 5)), seed=seed)


def _max_pool2d(rng, seed):
    from minidet.nn.pool import MaxPool2d

    return _layer_case(MaxPool2d(2), _distinct(rng, (2, 3, 6, 6)), seed=seed)


def _roi_pool(rng, seed):
    from minidet.nn.roi_pool import RoIPool

    rois = np.array([[0, 0, 0, 47, 47], [1, 8, 4, 30, 40], [0, 20, 20, 27, 27]], np.float64)
    return _layer_case(RoIPool((3, 3), spatial_scale=1 / 4), _distinct(rng, (2, 2, 12, 12)), rois, seed=seed)


CASES = {"Linear": _linear, "ReLU": _relu, "Dropout": _dropout, "Flatten": _flatten,
         "softmax_log_loss": _softmax_log_loss, "smooth_l1_loss": _smooth_l1_loss, "fast_rcnn_loss": _fast_rcnn_loss,
         "Conv2d": _conv2d, "MaxPool2d": _max_pool2d, "RoIPool": _roi_pool}
# layers whose modules a partial installation may lack: skipped with a note
MODULES = {"Conv2d": "minidet.nn.conv", "MaxPool2d": "minidet.nn.pool", "RoIPool": "minidet.nn.roi_pool"}


def main(argv=None):
    """`minidet gradcheck [LAYER] [--seed N]`: the table of relative errors; exit status 1 if any fails."""
    parser = argparse.ArgumentParser(
        prog="minidet gradcheck",
        description=f"Check every backward against central finite differences in float64 "
                    f"(pass: relative error < {TOLERANCE:g}).")
    parser.add_argument("layer", nargs="?", help="check only this layer or loss: " + ", ".join(CASES))
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and upstream gradients (default 0)")
    args = parser.parse_args(argv)

    names = list(CASES)
    if args.layer is not None:
        names = [name for name in CASES if name.lower() == args.layer.lower()]
        if not names:
            print(f"minidet gradcheck: unknown layer {args.layer!r}; choose from: {', '.join(CASES)}", file=sys.stderr)
            return 2

    print(f"{'layer':<18}{'inputs -> output':<42}{'quantity':<10}{'rel. error':>11}  result")
    failures = checks = 0
    for name in names:
        if name in MODULES and importlib.util.find_spec(MODULES[name]) is None:
            print(f"{name:<18}skipped: module {MODULES[name]} is not present")
            continue
        shapes, errors = CASES[name](np.random.default_rng(args.seed), args.seed)
        for quantity, error in errors.items():
            ok = error < TOLERANCE
            failures, checks = failures + (not ok), checks + 1
            print(f"{name:<18}{shapes:<42}{quantity:<10}{error:>11.1e}  {'pass' if ok else 'FAIL'}")
            name = shapes = ""  # the layer's name and shapes once, on its first row
    print(f"{checks - failures} of {checks} checks pass")
    return 1 if failures else 0
