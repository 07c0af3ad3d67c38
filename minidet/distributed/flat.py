"""One flat buffer per step: every gradient, weighted by its rank's RoIs, and the step's sums.

Each rank's loss is a mean over its own R_k RoIs (minidet.losses: both terms divided by R_k), so
its gradient is g_k = (1/R_k) sum over its RoIs of the per-RoI gradients. The loss of the whole
global batch is the mean over all R = sum_k R_k RoIs, whose gradient is therefore

    g = (1/R) sum_k R_k g_k          (not the plain mean of the g_k, unless every R_k is equal)

A rank packs R_k g_k and then [R_k, R_k loss_k, R_k loss_cls_k, R_k loss_bbox_k, R_k accuracy_k]
end to end into one preallocated buffer; a single all-reduce (sum) of that buffer gives every rank
sum_k R_k g_k and the sums; dividing by R gives the gradient of the concatenated batch and its
loss, accuracy and RoI count, the same numbers on every rank. Weight decay and momentum are not in
the buffer: the ordinary SGD step applies them once, after it, to identical parameters, so the
velocities stay identical on every rank too.

The buffer lives on the gradients' device, in their dtype (float32: RoI counts are exact up to 2^24).
"""
import math

from minidet.backend import asnumpy, get_array_module

STATS = ("rois", "loss", "loss_cls", "loss_bbox", "accuracy")


class FlatBuffer:
    """Named arrays laid end to end in one 1-d buffer, followed by `extras` scalars.

    arrays: {name: array}, all of one dtype and one module (numpy or cupy), any shapes.
    buffer: (size + extras,) of that dtype on that device; views() are its pieces reshaped.
    """

    def __init__(self, arrays, extras=0):
        if not arrays:
            raise ValueError("no arrays to lay out")
        dtypes = {a.dtype for a in arrays.values()}
        if len(dtypes) > 1:
            raise TypeError(f"one flat buffer holds one dtype, got {sorted(str(d) for d in dtypes)}")
        self.xp = get_array_module(*arrays.values())
        self.layout, offset = {}, 0
        for name, a in arrays.items():
            self.layout[name] = (offset, tuple(a.shape))
            offset += a.size
        self.size, self.extras = offset, int(extras)
        self.buffer = self.xp.empty(self.size + self.extras, dtypes.pop())

    def fits(self, arrays):
        """Whether `arrays` have this buffer's names, shapes, dtype and device."""
        return (list(arrays) == list(self.layout) and get_array_module(*arrays.values()) is self.xp
                and all(tuple(a.shape) == self.layout[k][1] and a.dtype == self.buffer.dtype
                        for k, a in arrays.items()))

    def _piece(self, name):
        offset, shape = self.layout[name]
        return self.buffer[offset:offset + math.prod(shape)]

    def pack(self, arrays, scale=None):
        """buffer[piece of name] <- arrays[name] (times `scale`, a number, when given)."""
        for name, a in arrays.items():
            piece = self._piece(name)
            if scale is None:
                piece[...] = a.reshape(-1)
            else:
                self.xp.multiply(a.reshape(-1), scale, out=piece)

    def views(self):
        """{name: the buffer's piece, shaped as the array was}: no copies."""
        return {name: self._piece(name).reshape(shape) for name, (_, shape) in self.layout.items()}

    def unpack_into(self, arrays):
        """arrays[name][...] <- the buffer's piece, in place."""
        for name, view in self.views().items():
            arrays[name][...] = view

    @property
    def tail(self):
        """The `extras` scalars after the arrays, a view."""
        return self.buffer[self.size:]


def gradient_buffer(grads):
    """A FlatBuffer for these gradients and the step's sums (STATS)."""
    return FlatBuffer(grads, extras=len(STATS))


def pack_step(flat, grads, rois, loss, parts):
    """Fill `flat` with this rank's R_k g_k and R_k x (1, loss, loss_cls, loss_bbox, accuracy).

    grads {name: array} (means over this rank's RoIs), rois R_k an int, loss a 0-d array or
    number, parts {"loss_cls", "loss_bbox", "accuracy"} as fast_rcnn_loss(details=True) gives them.
    A rank without RoIs contributes zeros (its means would be 0/0).
    """
    xp, r = flat.xp, float(rois)
    if rois == 0:
        flat.buffer[...] = 0
        return
    flat.pack(grads, scale=r)
    values = [loss, parts["loss_cls"], parts["loss_bbox"], parts["accuracy"]]
    tail = flat.tail
    tail[0] = r
    tail[1:] = xp.stack([xp.asarray(v, dtype=flat.buffer.dtype).reshape(()) for v in values]) * r


def unpack_step(flat):
    """After the sum over ranks: (grads {name: view of the buffer} = sum_k R_k g_k / R, stats).

    stats: {"rois": R, "loss", "loss_cls", "loss_bbox", "accuracy": means over the R RoIs}, as
    Python numbers (one small copy to the host). R = 0 (no rank had a RoI) is a ValueError.
    """
    sums = asnumpy(flat.tail).astype(float)
    total = sums[0]
    if total <= 0:
        raise ValueError("no rank had a RoI in this step")
    body = flat.buffer[:flat.size]
    body /= flat.buffer.dtype.type(total)
    stats = {"rois": int(round(total))}
    stats.update({name: float(value / total) for name, value in zip(STATS[1:], sums[1:])})
    return flat.views(), stats
