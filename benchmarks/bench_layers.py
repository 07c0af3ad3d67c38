"""Convolution and fully connected layers on the CPU: minidet against torch, side by side.

    python benchmarks/bench_layers.py [--repeat 5] [--quick] [--threads N] [--clock wall|cpu]

Rows (VGG16 Fast R-CNN shapes, float32, 2 images of 224x320):
- conv3_1: Conv2d(128, 256, 3, padding=1) on (2, 128, 56, 80);
- conv4_2: Conv2d(512, 512, 3, padding=1) on (2, 512, 28, 40);
- fc6:     Linear(25088, 4096) on 128 RoIs (skipped when minidet.nn.linear is absent).
Each is timed forward only and forward + backward (input, weight and bias gradients). torch runs
torch.nn.functional.conv2d / linear, the backward through autograd, with torch.set_num_threads
equal to the BLAS thread count numpy uses (or --threads). minidet and torch are timed in separate
blocks, each after a warm-up run, so that neither pays for the other's idle-spinning threads.
Reported per row: median and minimum seconds, GFLOP/s (2 flops per multiply-add; the backward
costs twice the forward) and the ratio minidet / torch of the medians (below 1: minidet is faster).
Written to benchmarks/results/bench_layers.json with a description of the machine.

On a machine busy with other work, wall times say more about the neighbours than about the
code: `--threads 1 --clock cpu` then compares the work itself (CPU seconds of one thread).
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, time_call, write_json  # noqa: E402
from minidet.nn.conv import Conv2d  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_layers.json")

CONV_ROWS = {  # name: (N, C, F, H, W), 3x3 kernels, stride 1, padding 1
    "conv3_1": (2, 128, 256, 56, 80),
    "conv4_2": (2, 512, 512, 28, 40),
}
FC6 = (128, 25088, 4096)  # RoIs, in, out


def blas_threads():
    """The thread count of numpy's BLAS (None when threadpoolctl cannot tell)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def cpu_time_call(fn, repeat=5, warmup=1):
    """common.time_call with the process's CPU time (all its threads) instead of wall time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeat}


def conv_workload(shape, rng, torch):
    n, c, f, h, w = shape
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    dy = rng.standard_normal((n, f, h, w), dtype=np.float32)
    conv = Conv2d(c, f, 3, padding=1, rng=rng)
    flops = 2 * n * f * c * 9 * h * w
    ours = {"forward": lambda: conv.forward(x),
            "forward+backward": lambda: (conv.forward(x), conv.backward(dy))}
    theirs = None
    if torch is not None:
        F = torch.nn.functional
        tx, tdy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
        tw, tb = (torch.from_numpy(conv.params[k].copy()).requires_grad_() for k in ("weight", "bias"))

        def torch_forward():
            with torch.no_grad():
                return F.conv2d(tx, tw, tb, padding=1)

        def torch_forward_backward():
            tx.grad = tw.grad = tb.grad = None
            F.conv2d(tx, tw, tb, padding=1).backward(tdy)

        theirs = {"forward": torch_forward, "forward+backward": torch_forward_backward}
    return f"x {(n, c, h, w)} -> {(n, f, h, w)}, 3x3 pad 1", flops, ours, theirs


def linear_workload(shape, rng, torch):
    from minidet.nn.linear import Linear

    n, fan_in, fan_out = shape
    x = rng.standard_normal((n, fan_in), dtype=np.float32)
    dy = rng.standard_normal((n, fan_out), dtype=np.float32)
    fc = Linear(fan_in, fan_out, rng=rng)
    flops = 2 * n * fan_in * fan_out
    ours = {"forward": lambda: fc.forward(x),
            "forward+backward": lambda: (fc.forward(x), fc.backward(dy))}
    theirs = None
    if torch is not None:
        F = torch.nn.functional
        tx, tdy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
        tw, tb = (torch.from_numpy(fc.params[k].copy()).requires_grad_() for k in ("weight", "bias"))

        def torch_forward():
            with torch.no_grad():
                return F.linear(tx, tw, tb)

        def torch_forward_backward():
            tx.grad = tw.grad = tb.grad = None
            F.linear(tx, tw, tb).backward(tdy)

        theirs = {"forward": torch_forward, "forward+backward": torch_forward_backward}
    return f"x {(n, fan_in)} -> {(n, fan_out)}", flops, ours, theirs


def measure(name, workload, repeat, warmup, timer=time_call):
    """The rows of one layer: forward and forward+backward, minidet and torch."""
    description, flops, ours, theirs = workload
    rows = []
    for direction in ("forward", "forward+backward"):
        work = flops * (1 if direction == "forward" else 3)
        row = {"layer": name, "shape": description, "pass": direction, "gflop": work / 1e9}
        mine = timer(ours[direction], repeat=repeat, warmup=warmup)
        row |= {"minidet_median_s": mine["median_s"], "minidet_min_s": mine["min_s"],
                "minidet_gflops": work / mine["median_s"] / 1e9}
        if theirs is not None:
            ref = timer(theirs[direction], repeat=repeat, warmup=warmup)
            row |= {"torch_median_s": ref["median_s"], "torch_min_s": ref["min_s"],
                    "torch_gflops": work / ref["median_s"] / 1e9,
                    "ratio": mine["median_s"] / ref["median_s"],
                    "ratio_of_minima": mine["min_s"] / ref["min_s"]}
        rows.append(row)
        torch_text = (f"torch {row['torch_median_s'] * 1e3:8.1f} ms ({row['torch_gflops']:5.1f} GFLOP/s)  "
                      f"ratio {row['ratio']:.2f} (of minima {row['ratio_of_minima']:.2f})") if theirs else "torch -"
        print(f"{name:<8} {direction:<17} minidet {row['minidet_median_s'] * 1e3:8.1f} ms "
              f"({row['minidet_gflops']:5.1f} GFLOP/s)  {torch_text}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Rows: conv3_1, conv4_2 (forward, forward+backward), fc6 (Linear).")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 timed runs per measurement, for a smoke test")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numpy's BLAS, the Cython kernels and torch "
                             "(default: numpy's BLAS thread count)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall seconds (default) or CPU seconds of the process")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {os.path.relpath(RESULTS)})")
    args = parser.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    if repeat < 1:
        parser.error("--repeat must be at least 1")

    threads = args.threads or blas_threads() or os.cpu_count()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)   # BLAS and the OpenMP of the Cython kernels
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
        print("torch is not installed: timing minidet only")

    timer = time_call if args.clock == "wall" else cpu_time_call
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in CONV_ROWS.items():
        rows += measure(name, conv_workload(shape, rng, torch), repeat, 1, timer)
    if importlib.util.find_spec("minidet.nn.linear") is not None:
        rows += measure("fc6", linear_workload(FC6, rng, torch), repeat, 1, timer)
    else:
        print("fc6: skipped, minidet.nn.linear is not present")
    write_json(args.out, {"benchmark": "bench_layers", "repeat": repeat, "dtype": "float32", "clock": args.clock,
                          "machine": machine_info(threads), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
