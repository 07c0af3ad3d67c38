"""The CPU optimiser step on VGG16 Fast R-CNN's trainable parameters: minidet's SGD against the
allocating form it replaced (three full-size temporaries per parameter per step).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_sgd.py [--repeat 3] [--out ...]

The parameters are those the paper trains (conv3_1 .. fc7, cls_score and bbox_pred for 21
classes), float32: 134 M values, fc6's weight alone 103 M. Both forms compute the same numbers
(checked here on every run); the step is bound by memory traffic, so the figure that matters is
seconds per step, and the peak memory the temporaries add (3 x 411 MB for fc6).
"""
import argparse
import os

import numpy as np

from benchmarks.common import machine_info, time_call, write_json
from minidet.optim import SGD

VGG16_TRAINED = {   # name: shape, conv3_1 and above, as models/vgg16.py and fast_rcnn.py build them
    **{f"conv3_{k}.weight": (256, 128 if k == 1 else 256, 3, 3) for k in (1, 2, 3)},
    **{f"conv4_{k}.weight": (512, 256 if k == 1 else 512, 3, 3) for k in (1, 2, 3)},
    **{f"conv5_{k}.weight": (512, 512, 3, 3) for k in (1, 2, 3)},
    **{f"conv{b}_{k}.bias": (256 if b == 3 else 512,) for b in (3, 4, 5) for k in (1, 2, 3)},
    "fc6.weight": (4096, 25088), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "cls_score.weight": (21, 4096), "cls_score.bias": (21,),
    "bbox_pred.weight": (84, 4096), "bbox_pred.bias": (84,),
}


def allocating_step(sgd, grads):
    """The step as it was: v *= mu; v += lr_eff * (g + decay_eff * w); w -= v, with temporaries."""
    lr = sgd.lr
    for name, w in sgd.params.items():
        g, v = grads[name], sgd.velocity[name]
        decay = sgd.weight_decay * sgd.decay_mult[name]
        v *= sgd.momentum
        v += (lr * sgd.lr_mult[name]) * (g + decay * w if decay else g)
        w -= v
    sgd.iteration += 1


def make(seed):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s, dtype=np.float32) for k, s in VGG16_TRAINED.items()}
    grads = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for k, s in VGG16_TRAINED.items()}
    return params, grads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_sgd.json"))
    args = parser.parse_args(argv)

    params, grads = make(0)
    count = sum(p.size for p in params.values())
    print(f"{len(params)} parameters, {count / 1e6:.1f} M float32 values")
    fused = SGD(params, lr=0.001, momentum=0.9, weight_decay=0.0005)
    reference = SGD({k: v.copy() for k, v in params.items()}, lr=0.001, momentum=0.9, weight_decay=0.0005)
    fused.step(grads)
    allocating_step(reference, grads)
    same = all(np.array_equal(fused.params[k], reference.params[k]) for k in params)
    print(f"one step of each form gives the same parameters bit for bit: {same}")
    rows = []
    for form, step in (("allocating (before)", lambda: allocating_step(reference, grads)),
                       ("in place with out= (now)", lambda: fused.step(grads))):
        timing = time_call(step, repeat=args.repeat, warmup=1)
        rows.append({"form": form, **timing})
        print(f"{form:28s} median {timing['median_s']:.3f} s  min {timing['min_s']:.3f} s")
    write_json(args.out, {"benchmark": "bench_sgd", "clock": "wall", "dtype": "float32", "values": int(count),
                          "identical": bool(same), "machine": machine_info(), "repeat": args.repeat,
                          "rows": rows, "ratio_now_over_before": rows[1]["median_s"] / rows[0]["median_s"]})


if __name__ == "__main__":
    main()
