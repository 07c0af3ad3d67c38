"""Convolution and fully connected layers on the CPU: minidet against torch, side by side.

    python benchmarks/bench_layers.py [--repeat 5] [--rounds 3] [--quick] [--threads N] [--clock wall|cpu]
                                      [--algorithms auto,im2col,winograd2,winograd4] [--accuracy]

Rows (VGG16 Fast R-CNN shapes, float32, 2 images of 224x320):
- conv3_1: Conv2d(128, 256, 3, padding=1) on (2, 128, 56, 80);
- conv4_2: Conv2d(512, 512, 3, padding=1) on (2, 512, 28, 40);
- fc6:     Linear(25088, 4096) on 128 RoIs (skipped when minidet.nn.linear is absent).
Each convolution row is timed with every algorithm of --algorithms (default: auto, the layer's
own choice), forward only and forward + backward (input, weight and bias gradients). torch runs
torch.nn.functional.conv2d / linear, the backward through autograd, with torch.set_num_threads
equal to the BLAS thread count numpy uses (or --threads). minidet and torch are timed in separate
blocks, each after a warm-up run, so that neither pays for the other's idle-spinning threads; the
pair of blocks is repeated --rounds times, and a row reports the medians over the rounds.
Reported per row: median and minimum seconds, GFLOP/s (2 flops per multiply-add of the direct
convolution; the backward costs twice the forward), the ratio minidet / torch of the medians (below
1: minidet is faster) and the median of the rounds' ratios. Written to
benchmarks/results/bench_layers.json with a description of the machine and the load average.

--accuracy adds the float32 error of every VGG16 convolution for each algorithm against float64
im2col: real weights (--weights, default the shared vgg16_hed_conv.npz) on a real image
(--image, preprocessed as the model does), each layer on the float64 network's input rounded to
float32, as max |y32 - y64| / max |y64| and as a relative RMS.

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

ALGORITHMS = ("im2col", "winograd2", "winograd4")
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")

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


def conv_workload(shape, rng, torch, algorithm="auto"):
    n, c, f, h, w = shape
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    dy = rng.standard_normal((n, f, h, w), dtype=np.float32)
    conv = Conv2d(c, f, 3, padding=1, rng=rng, algorithm=algorithm)
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
    description = f"x {(n, c, h, w)} -> {(n, f, h, w)}, 3x3 pad 1, {conv.choose_algorithm(x)}"
    return description, flops, ours, theirs


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


def measure(name, workload, repeat, warmup, timer=time_call, rounds=1):
    """The rows of one layer: forward and forward+backward, minidet and torch, `rounds` times."""
    description, flops, ours, theirs = workload
    rows = []
    for direction in ("forward", "forward+backward"):
        work = flops * (1 if direction == "forward" else 3)
        row = {"layer": name, "shape": description, "pass": direction, "gflop": work / 1e9, "rounds": rounds}
        mine, ref = [], []
        for _ in range(rounds):
            mine.append(timer(ours[direction], repeat=repeat, warmup=warmup))
            if theirs is not None:
                ref.append(timer(theirs[direction], repeat=repeat, warmup=warmup))
        median = statistics.median(m["median_s"] for m in mine)
        row |= {"minidet_median_s": median, "minidet_min_s": min(m["min_s"] for m in mine),
                "minidet_gflops": work / median / 1e9}
        if theirs is not None:
            ref_median = statistics.median(r["median_s"] for r in ref)
            row |= {"torch_median_s": ref_median, "torch_min_s": min(r["min_s"] for r in ref),
                    "torch_gflops": work / ref_median / 1e9,
                    "ratio": median / ref_median,
                    "ratio_of_minima": row["minidet_min_s"] / min(r["min_s"] for r in ref),
                    "median_of_round_ratios": statistics.median(m["median_s"] / r["median_s"]
                                                                for m, r in zip(mine, ref))}
        rows.append(row)
        torch_text = (f"torch {row['torch_median_s'] * 1e3:8.1f} ms ({row['torch_gflops']:5.1f} GFLOP/s)  "
                      f"ratio {row['ratio']:.2f} (of minima {row['ratio_of_minima']:.2f})") if theirs else "torch -"
        print(f"{name:<18} {direction:<17} minidet {row['minidet_median_s'] * 1e3:8.1f} ms "
              f"({row['minidet_gflops']:5.1f} GFLOP/s)  {torch_text}", flush=True)
    return rows


def vgg16_accuracy(weights_path, image_path, size):
    """Per VGG16 convolution and algorithm: the float32 error against float64 im2col on real data."""
    import cv2

    from minidet.data.transforms import prepare_image
    from minidet.models.vgg16 import conv_names
    from minidet.nn.pool import MaxPool2d
    from minidet.weights import load_weights

    state, convention = load_weights(weights_path)
    image = cv2.imread(image_path)
    if image is None:
        raise FileNotFoundError(f"{image_path}: not an image OpenCV can read")
    chw, _ = prepare_image(image, convention, target_size=size, max_size=1000)
    x = chw[None].astype(np.float64)
    table = {}
    for name in conv_names():
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        exact = Conv2d(weight.shape[1], weight.shape[0], 3, padding=1, dtype=np.float64, algorithm="im2col")
        exact.params = {"weight": weight.astype(np.float64), "bias": bias.astype(np.float64)}
        y = exact.forward(x)
        table[name] = {"input": list(x.shape)}
        for algorithm in ALGORITHMS:
            conv = Conv2d(weight.shape[1], weight.shape[0], 3, padding=1, algorithm=algorithm)
            conv.params = {"weight": weight, "bias": bias}
            y32 = conv.forward(x.astype(np.float32)).astype(np.float64)
            table[name][algorithm] = {
                "max_error_over_max": float(np.abs(y32 - y).max() / np.abs(y).max()),
                "rms_relative": float(np.sqrt(np.mean((y32 - y) ** 2) / np.mean(y ** 2)))}
        x = np.maximum(y, 0)
        if name.endswith(("1_2", "2_2", "3_3", "4_3")):
            x = MaxPool2d(2, 2, ceil_mode=True).forward(x)
        print(f"{name:<8} " + "  ".join(f"{a} {e['max_error_over_max']:.1e}" for a, e in table[name].items()
                                         if a != "input"), flush=True)
    return {"weights": weights_path, "image": image_path, "target_size": size, "layers": table}


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
    parser.add_argument("--rounds", type=int, default=3, help="minidet/torch block pairs per row (default 3)")
    parser.add_argument("--algorithms", default="auto",
                        help="convolution algorithms to time, comma-separated (default auto)")
    parser.add_argument("--accuracy", action="store_true", help="add the per-layer float32 error study")
    parser.add_argument("--weights", default=os.path.join(SHARED, "weights", "vgg16_hed_conv.npz"),
                        help="VGG16 weights for --accuracy")
    parser.add_argument("--image", default=os.path.join(SHARED, "fast-rcnn-demo", "000004.jpg"),
                        help="image for --accuracy")
    parser.add_argument("--image-size", type=int, default=600, help="shorter side of the --accuracy image")
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
    rounds = 1 if args.quick else args.rounds
    results = {"benchmark": "bench_layers", "repeat": repeat, "rounds": rounds, "dtype": "float32",
               "clock": args.clock, "machine": machine_info(threads), "load_average": os.getloadavg(), "rows": []}
    rows = results["rows"]
    for name, shape in CONV_ROWS.items():
        for algorithm in args.algorithms.split(","):
            rng = np.random.default_rng(0)
            label = name if algorithm == "auto" else f"{name} {algorithm}"
            rows += measure(label, conv_workload(shape, rng, torch, algorithm), repeat, 1, timer, rounds)
    if importlib.util.find_spec("minidet.nn.linear") is not None:
        rows += measure("fc6", linear_workload(FC6, np.random.default_rng(0), torch), repeat, 1, timer, rounds)
    else:
        print("fc6: skipped, minidet.nn.linear is not present")
    results["load_average_after"] = os.getloadavg()
    if args.accuracy:
        results["accuracy"] = vgg16_accuracy(args.weights, args.image, args.image_size)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
