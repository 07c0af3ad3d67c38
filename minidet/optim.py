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
"""
import numpy as np

from minidet.backend import asnumpy, get_array_module, is_gpu_array


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

    def step(self, grads):
        """One update of every parameter from grads {name: array} (the same names as params).

        A parameter without a gradient in `grads` is a programming error, not a frozen layer
        (frozen layers are left out of params), so it raises KeyError.
        """
        lr = self.lr
        for name, w in self.params.items():
            g = grads[name]
            if g.shape != w.shape:
                raise ValueError(f"gradient of {name} has shape {g.shape}, parameter {w.shape}")
            v = self.velocity[name]
            decay = self.weight_decay * self.decay_mult[name]
            # v = momentum * v + lr_eff * (g + decay_eff * w), computed in place in w's dtype
            v *= self.momentum
            v += (lr * self.lr_mult[name]) * (g + decay * w if decay else g)
            w -= v
        self.iteration += 1

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
