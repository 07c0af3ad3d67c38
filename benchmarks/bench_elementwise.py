"""ReLU and dropout on the CPU: minidet.ops.elementwise against the layers' current formulas.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_elementwise [--repeat 5]

Shapes of VGG16 Fast R-CNN at 600x1000: conv3's output (2, 256, 150, 250) and fc6's (128, 4096).
The layers' forms: ReLU keeps a boolean mask and multiplies (x * (x > 0), dy * mask); dropout draws
uniforms from a numpy Generator, compares, casts, divides and multiplies. The fused forms: ReLU
keeps nothing (its backward reads y); dropout hashes (seed, draw, index) (minidet.ops.elementwise).
"""
import argparse
import os

import numpy as np

from benchmarks.common import machine_info, time_call, write_json
from minidet.ops import elementwise

SHAPES = {"conv3": (2, 256, 150, 250), "fc6": (128, 4096)}


def layer_relu(x, dy):
    mask = x > 0
    y = x * mask
    return y, dy * mask


def fused_relu(x, dy):
    y = elementwise.relu(x)
    return y, elementwise.relu_backward(y, dy)


def layer_dropout(x, dy, generator):
    mask = (generator.random(x.shape, dtype=x.dtype) >= 0.5).astype(x.dtype) / (1 - 0.5)
    return x * mask, dy * mask


def fused_dropout(x, dy, draw):
    return elementwise.dropout(x, 0.5, 0, draw), elementwise.dropout_backward(dy, 0.5, 0, draw)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_elementwise.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for where, shape in SHAPES.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        generator = np.random.default_rng(1)
        cases = [("relu forward+backward", "layer", lambda: layer_relu(x, dy)),
                 ("relu forward+backward", "fused", lambda: fused_relu(x, dy))]
        if where == "fc6":
            cases += [("dropout forward+backward", "layer", lambda: layer_dropout(x, dy, generator)),
                      ("dropout forward+backward", "fused", lambda: fused_dropout(x, dy, 3))]
        for op, form, fn in cases:
            timing = time_call(fn, repeat=args.repeat, warmup=1)
            rows.append({"op": op, "form": form, "shape": list(shape), **timing})
            print(f"{where:6s} {op:26s} {form:6s} median {timing['median_s'] * 1e3:8.2f} ms")
    write_json(args.out, {"benchmark": "bench_elementwise", "clock": "wall", "dtype": "float32",
                          "machine": machine_info(), "repeat": args.repeat, "rows": rows})


if __name__ == "__main__":
    main()
