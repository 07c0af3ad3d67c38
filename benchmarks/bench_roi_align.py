"""RoIAlign on the CPU: minidet against torchvision, side by side.

    python benchmarks/bench_roi_align.py [--repeat 5] [--threads 2] [--out PATH]

Rows (float32, the sizes of Fast R-CNN at test time, as benchmarks/bench_roi_pool.py): forward, and
forward + backward, of 2000 RoIs on a (2, 512, 38, 63) conv5_3 map (two 600x1000 images), 7x7 output,
scale 1/16, sampling_ratio 2, aligned=True; the RoIs drawn (seed 0) like selective-search proposals,
images alternating. torch: torchvision.ops.roi_align, the backward through autograd (y.backward(dy));
both must give the same outputs and gradients (they are checked to be identical, bit for bit).
minidet's Cython kernels (OpenMP) and torch are given the same number of threads (--threads, default
2); torchvision's CPU kernel is a plain loop, one thread whatever torch's count, so minidet is also
timed on one thread (the column "1 thread"). Each side is timed in its own block after a warm-up
run. Reported per row: median and minimum seconds and the ratio minidet / torch of the medians
(below 1: minidet is faster). Written to benchmarks/results/bench_roi_align.json with a description
of the machine.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_roi_pool import MAP_SHAPE, NUM_ROIS, map_and_rois  # noqa: E402
from benchmarks.common import (import_torch, kernel_parser, machine_info, parse_kernel_arguments,  # noqa: E402
                               time_call, write_json)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_roi_align.json")
SETTINGS = dict(output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2, aligned=True)


def workloads(rng, torch):
    """[(direction, shape, minidet's call, torch's call or None)]."""
    from minidet.ops.roi_align import roi_align, roi_align_backward

    x, rois, dy = map_and_rois(rng)

    def forward_backward():
        roi_align(x, rois, **SETTINGS)
        return roi_align_backward(dy, rois, x.shape, **SETTINGS)

    ours = {"forward": lambda: roi_align(x, rois, **SETTINGS), "forward+backward": forward_backward}
    theirs = {}
    if torch is not None:
        import torchvision

        tx, trois, tdy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(rois), torch.from_numpy(dy)
        args = (SETTINGS["output_size"], SETTINGS["spatial_scale"], SETTINGS["sampling_ratio"], SETTINGS["aligned"])

        def torch_forward():
            with torch.no_grad():
                return torchvision.ops.roi_align(tx, trois, *args)

        def torch_forward_backward():
            tx.grad = None
            torchvision.ops.roi_align(tx, trois, *args).backward(tdy)

        theirs = {"forward": torch_forward, "forward+backward": torch_forward_backward}
        # the same layer: the same outputs and the same gradient, bit for bit
        np.testing.assert_array_equal(ours["forward"](), torch_forward().numpy())
        torch_forward_backward()
        np.testing.assert_array_equal(forward_backward(), tx.grad.numpy())
    shape = f"x {MAP_SHAPE}, {NUM_ROIS} RoIs -> {dy.shape}"
    return [(direction, shape, ours[direction], theirs.get(direction)) for direction in ("forward", "forward+backward")]


def measure(rows, repeat, threads):
    from threadpoolctl import threadpool_limits

    results = []
    for direction, shape, ours, theirs in rows:
        mine = time_call(ours, repeat=repeat, warmup=1)
        with threadpool_limits(1, user_api="openmp"):
            single = time_call(ours, repeat=repeat, warmup=1)
        row = {"name": "roi_align", "direction": direction, "shape": shape, "threads": threads,
               "minidet_median_s": mine["median_s"], "minidet_min_s": mine["min_s"],
               "minidet_1thread_median_s": single["median_s"], "minidet_1thread_min_s": single["min_s"]}
        text = "torch -"
        if theirs is not None:
            ref = time_call(theirs, repeat=repeat, warmup=1)
            row |= {"torch_median_s": ref["median_s"], "torch_min_s": ref["min_s"],
                    "ratio": mine["median_s"] / ref["median_s"], "ratio_of_minima": mine["min_s"] / ref["min_s"],
                    "ratio_1thread": single["median_s"] / ref["median_s"]}
            text = (f"torch {ref['median_s'] * 1e3:8.1f} ms  ratio {row['ratio']:.2f} "
                    f"(of minima {row['ratio_of_minima']:.2f}; 1 thread {row['ratio_1thread']:.2f})")
        print(f"roi_align {direction:<17} minidet {mine['median_s'] * 1e3:8.1f} ms "
              f"(1 thread {single['median_s'] * 1e3:8.1f} ms)  {text}", flush=True)
        results.append(row)
    return results


def main(argv=None):
    args = parse_kernel_arguments(kernel_parser(__doc__, RESULTS), argv)
    import minidet._ext.roi_align  # noqa: F401
    import minidet._ext.roi_pool  # noqa: F401
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(args.threads, user_api="openmp")  # noqa: F841 (should OpenMP have started)
    torch = None if args.no_torch else import_torch(args.threads)

    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    rows = measure(workloads(rng, torch), args.repeat, args.threads)
    # the 1-minute load average before and after: other work on a shared machine slows both sides
    write_json(args.out, {"benchmark": "bench_roi_align", "repeat": args.repeat, "dtype": "float32",
                          "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()},
                          "machine": machine_info(args.threads), "load_average": [load_before[0], os.getloadavg()[0]],
                          "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
