"""The four Winograd F(4x4, 3x3) tile transforms on the CPU, at VGG16's layer shapes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_winograd [--repeat 9]

For each layer of VGG16's training step at 2x224x320 (conv1_2, conv2_2, conv3_2, conv4_2: C = F),
the milliseconds a whole layer spends in each transform, as Conv2d runs them: in chunks of the tile
rows that fit the shared workspace (minidet.nn.conv.Workspace), one chunk timed and multiplied by
the number of chunks. The transforms are minidet.ops.winograd's:

    input           V = B^T d B          (forward, and the weight gradient's recomputed tiles)
    output          y = A^T M A + b      (forward)
    output_adjoint  Z = A dY A^T         (backward)
    input_adjoint   dx += B dV B^T       (backward, dx)

A benchmark of the repository it sits in: run it from two checkouts to compare builds. Writes
benchmarks/results/bench_winograd.json.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, time_call, write_json  # noqa: E402
from minidet.nn.conv import Workspace  # noqa: E402
from minidet.ops import winograd  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_winograd.json")
LAYERS = {"conv1_2": (2, 64, 224, 320), "conv2_2": (2, 128, 112, 160), "conv3_2": (2, 256, 56, 80),
          "conv4_2": (2, 512, 28, 40)}
M = 4


def layer_times(shape, repeat):
    """{transform: ms for the whole layer} of an (N, C, H, W) input, C = F."""
    n, c, h, w = shape
    a2, th, tw = (M + 2) ** 2, winograd.tiles(h, M), winograd.tiles(w, M)
    step = Workspace().chunk_rows(n * th, a2 * 2 * c * tw * 4, tw)     # as Conv2d._winograd_chunks
    chunks, rows = -(-n * th // step), (0, step)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    tiles = winograd.input_transform(x, M, rows)
    y, dx, bias = np.empty_like(x), np.zeros_like(x), np.zeros(c, np.float32)
    calls = {"input": lambda: winograd.input_transform(x, M, rows, out=tiles),
             "output": lambda: winograd.output_transform(tiles, bias, M, y, rows),
             "output_adjoint": lambda: winograd.output_transform_adjoint(x, M, rows, out=tiles),
             "input_adjoint": lambda: winograd.input_transform_adjoint(tiles, M, dx, rows)}
    return {name: time_call(fn, repeat)["median_s"] * 1e3 * chunks for name, fn in calls.items()}, chunks, step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9, help="timed calls per transform (median; default 9)")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)
    results = {"machine": machine_info(), "load_average": os.getloadavg(), "repeat": args.repeat,
               "tile": f"F({M}x{M}, 3x3)", "unit": "ms per layer", "layers": {}}
    for name, shape in LAYERS.items():
        times, chunks, step = layer_times(shape, args.repeat)
        results["layers"][name] = {"input_shape": list(shape), "chunks": chunks, "tile_rows_per_chunk": step,
                                   **{k: round(v, 3) for k, v in times.items()}}
        print(f"{name:8s} {shape}  " + "  ".join(f"{k} {v:6.2f}" for k, v in times.items()) + "  ms", flush=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
