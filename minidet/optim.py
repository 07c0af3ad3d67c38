"""Stochastic gradient descent with momentum, as Caffe's SGDSolver computes it.

For every parameter w with gradient g, at iteration t:

    lr_t  = base_lr * warmup(t) * gamma ** floor(t / step_size)     (step schedule)
    v    <- momentum * v + lr_t * lr_mult * (g + weight_decay * decay_mult * w)
    w    <- w - v

The learning rate sits inside the velocity (Caffe's form, not the "v = mu v + g; w -= lr v" of
some other libraries): a change of learning rate affects only the steps taken after it.
Biases learn twice as fast and are not decayed, as in the paper's prototxt (names ending in
".bias" get lr_mult 2, decay_mult 0 unless told otherwise). Frozen layers are simply absent
from `params`. Arrays are updated in place, so the model that owns them sees the change; numpy
and cupy arrays alike.

A step reads and writes each parameter's arrays without making any of their size: on the GPU one
fused kernel per parameter reads g, w, v once and writes v, w once; on the CPU NumPy's ufuncs
write into one scratch array, kept across steps and as large as the largest parameter. Both
devices round as "s = decay_eff * w; s += g; s *= lr_eff; v = momentum * v + s; w -= v" in the
parameter's dtype (s = lr_eff * g where decay_eff is 0), the GPU with its products rounded apart from its sums (no fused multiply-add),
so the two agree bit for bit (float32 subnormals aside, which the GPU flushes).

`step(grads, loss)` leaves every parameter and velocity unchanged when the loss is NaN or infinite,
on the GPU without reading the loss back: the training loop can read the loss once, after the
step, and still stop before an update that would spread a NaN.
"""
import functools

import numpy as np

from minidet.backend import asnumpy, get_array_module, is_gpu_array

_GPU_STEP = """
if (isfinite(loss[0])) {
    const T s = mul_rn(lr_eff, decay_eff != (T)0 ? add_rn(mul_rn(decay_eff, w), g) : g);
    v = add_rn(mul_rn(momentum, v), s);
    w = sub_rn(w, v);
}
"""
_GPU_PREAMBLE = """
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
"""


# The step as a cupy.ElementwiseKernel: (in_params, out_params, operation, preamble).
GPU_STEP_KERNEL = ("T g, T lr_eff, T decay_eff, T momentum, raw L loss", "T w, T v", _GPU_STEP, _GPU_PREAMBLE)


@functools.lru_cache(maxsize=None)
def _gpu_step_kernel():
    from minidet.backend import require_cupy

    in_params, out_params, operation, preamble = GPU_STEP_KERNEL
    return require_cupy().ElementwiseKernel(in_params, out_params, operation, "minidet_sgd_step", preamble=preamble)


def default_multipliers(name):
    """(lr_mult, decay_mult) of a parameter by its name: biases (2, 0), everything else (1, 1)."""
    return (2.0, 0.0) if name.endswith(".bias") else (1.0, 1.0)


class SGD:
    """Momentum SGD over a dict of parameters, updated in place.

    params: {name: array}, the model's trainable arrays (shapes as they are, any dtype float).
    lr: base learning rate; momentum; weight_decay (L2, added to the gradient as decay * w).
    lr_mult, decay_mult: optional {name: float} overriding the defaults of `default_multipliers`.
    step_size, gamma: the learning rate is multiplied by gamma every step_size iterations
        (no decay when step_size is None).
    warmup_iters, warmup_factor: over the first warmup_iters iterations the rate rises linearly
        from warmup_factor * lr to lr (0 iterations: no warmup). Training a narrow network from
        scratch at a high rate needs this; the paper's fine-tuning does not.
    """

    def __init__(self, params, lr=0.001, momentum=0.9, weight_decay=0.0005, lr_mult=None,
                 decay_mult=None, step_size=None, gamma=0.1, warmup_iters=0, warmup_factor=0.1):
        self.params = params
        self.base_lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.step_size = step_size
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.lr_mult, self.decay_mult = {}, {}
        for name in params:
            default_lr, default_decay = default_multipliers(name)
            self.lr_mult[name] = float((lr_mult or {}).get(name, default_lr))
            self.decay_mult[name] = float((decay_mult or {}).get(name, default_decay))
        self.velocity = {name: get_array_module(w).zeros_like(w) for name, w in params.items()}
        self.iteration = 0
        self._scratch_arrays = {}

    def lr_at(self, iteration):
        """The base learning rate used by the update of `iteration` (0-based)."""
        lr = self.base_lr
        if self.step_size:
            lr *= self.gamma ** (iteration // self.step_size)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1.0 - alpha) + alpha
        return lr

    @property
    def lr(self):
        """The learning rate the next step will use."""
        return self.lr_at(self.iteration)

    def step(self, grads, loss=None):
        """One update of every parameter from grads {name: array} (the same names as params).

        A parameter without a gradient in `grads` is a programming error, not a frozen layer
        (frozen layers are left out of params), so it raises KeyError. With `loss` (a 0-d array
        on the parameters' device, or a number), nothing changes when it is NaN or infinite.
        """
        lr = self.lr
        if loss is not None and not any(is_gpu_array(w) for w in self.params.values()):
            if not np.isfinite(float(loss)):
                self.iteration += 1
                return
            loss = None
        for name, w in self.params.items():
            g = grads[name]
            if g.shape != w.shape:
                raise ValueError(f"gradient of {name} has shape {g.shape}, parameter {w.shape}")
            v = self.velocity[name]
            decay = self.weight_decay * self.decay_mult[name]
            lr_eff = lr * self.lr_mult[name]
            if is_gpu_array(w):
                scalar = w.dtype.type
                guard = self._no_loss(w) if loss is None else loss
                _gpu_step_kernel()(g, scalar(lr_eff), scalar(decay), scalar(self.momentum), guard, w, v)
                continue
            # v = momentum * v + lr_eff * (g + decay_eff * w), in place in w's dtype
            s = self._scratch(w)
            if decay:
                np.multiply(w, decay, out=s)
                s += g
                s *= lr_eff
            else:                                   # no decay term at all, as for biases
                np.multiply(g, lr_eff, out=s)
            v *= self.momentum
            v += s
            w -= v
        self.iteration += 1

    def _scratch(self, w):
        """A w-shaped view of the kept scratch array (grown to the largest parameter, per dtype)."""
        flat = self._scratch_arrays.get(w.dtype)
        if flat is None or flat.size < w.size:
            flat = np.empty(max(x.size for x in self.params.values()), dtype=w.dtype)
            self._scratch_arrays[w.dtype] = flat
        return flat[:w.size].reshape(w.shape)

    def _no_loss(self, w):
        """A finite 0-d array on w's device, the guard of a step given no loss."""
        key = ("gpu", w.dtype)
        if key not in self._scratch_arrays:
            self._scratch_arrays[key] = get_array_module(w).zeros((), dtype=w.dtype)
        return self._scratch_arrays[key]

    def state_dict(self):
        """{'iteration': int, 'velocity.NAME': numpy array, ...}: all that resuming needs."""
        state = {"iteration": self.iteration}
        for name, v in self.velocity.items():
            state["velocity." + name] = asnumpy(v).copy()
        return state

    def load_state_dict(self, state):
        """Restore velocities and iteration from `state_dict()`, onto the parameters' device."""
        self.iteration = int(state["iteration"])
        for name, w in self.params.items():
            saved = np.asarray(state["velocity." + name])
            if saved.shape != w.shape:
                raise ValueError(f"saved velocity of {name} has shape {saved.shape}, parameter {w.shape}")
            xp = get_array_module(w)
            self.velocity[name] = xp.asarray(saved, dtype=w.dtype) if is_gpu_array(w) else saved.astype(w.dtype)
