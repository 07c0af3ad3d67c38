"""RoI pooling and NMS on the CPU: minidet against torchvision, side by side.

    python benchmarks/bench_roi_pool.py [--repeat 5] [--threads 2] [--out PATH]

Rows (float32, the sizes of Fast R-CNN at test time):
- roi_pool forward, and forward + backward: 2000 RoIs on a (2, 512, 38, 63) conv5_3 map (two 600x1000
  images), 7x7 output, scale 1/16. The RoIs are drawn (seed 0) like selective-search proposals: widths
  and heights log-uniform between 16 pixels and the image, placed uniformly inside it, images alternating.
  torch: torchvision.ops.roi_pool, the backward through autograd (y.backward(dy)).
- nms: 2000 boxes (log-uniform sizes inside a 600x1000 image, distinct random scores) at IoU 0.3 (the
  per-class threshold at test time) and 0.7. minidet counts areas pixel-inclusively (+1), torchvision does
  not; it is given the boxes widened by one pixel, which makes the two IoUs identical, and the kept
  indices are checked to be equal.
minidet's Cython kernels (OpenMP) and torch run with the same number of threads (--threads, default 2).
minidet and torch are timed in separate blocks, each after a warm-up run. Reported per row: median and
minimum seconds and the ratio minidet / torch of the medians (below 1: minidet is faster).
Written to benchmarks/results/bench_roi_pool.json with a description of the machine.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (import_torch, kernel_parser, machine_info, parse_kernel_arguments,  # noqa: E402
                               time_call, write_json)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_roi_pool.json")
MAP_SHAPE = (2, 512, 38, 63)  # conv5_3 of two 600x1000 images
NUM_ROIS = 2000
NUM_BOXES = 2000


def proposal_like_boxes(rng, n, height, width):
    """(n, 4) boxes inside a height x width image with log-uniform widths and heights from 16 pixels up."""
    w = np.exp(rng.uniform(np.log(16), np.log(width), n))
    h = np.exp(rng.uniform(np.log(16), np.log(height), n))
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w - 1, y1 + h - 1], axis=1)


def map_and_rois(rng):
    """x MAP_SHAPE, NUM_ROIS proposal-like RoIs (R, 5) over its images, and a dy (R, C, 7, 7): float32."""
    n, c, h, w = MAP_SHAPE
    x = rng.standard_normal(MAP_SHAPE, dtype=np.float32)
    boxes = proposal_like_boxes(rng, NUM_ROIS, h * 16, w * 16)
    rois = np.concatenate([(np.arange(NUM_ROIS) % n)[:, None], boxes], axis=1).astype(np.float32)
    return x, rois, rng.standard_normal((NUM_ROIS, c, 7, 7), dtype=np.float32)


def roi_pool_workloads(rng, torch):
    from minidet.ops.roi_pool import roi_pool, roi_pool_backward

    x, rois, dy = map_and_rois(rng)

    def forward_backward():
        y, argmax = roi_pool(x, rois)
        return roi_pool_backward(dy, argmax, x.shape, rois)

    ours = {"forward": lambda: roi_pool(x, rois), "forward+backward": forward_backward}
    theirs = None
    if torch is not None:
        import torchvision

        tx, trois, tdy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(rois), torch.from_numpy(dy)

        def torch_forward():
            with torch.no_grad():
                return torchvision.ops.roi_pool(tx, trois, (7, 7), 1 / 16)

        def torch_forward_backward():
            tx.grad = None
            torchvision.ops.roi_pool(tx, trois, (7, 7), 1 / 16).backward(tdy)

        theirs = {"forward": torch_forward, "forward+backward": torch_forward_backward}
        # the same layer: same outputs, same gradient
        y, argmax = roi_pool(x, rois)
        np.testing.assert_array_equal(y, torch_forward().numpy())
        torch_forward_backward()
        np.testing.assert_allclose(roi_pool_backward(dy, argmax, x.shape, rois), tx.grad.numpy(),
                                   rtol=1e-5, atol=1e-4)
    shape = f"x {MAP_SHAPE}, {NUM_ROIS} RoIs -> {dy.shape}"
    return [("roi_pool", direction, shape, ours[direction], theirs and theirs[direction])
            for direction in ("forward", "forward+backward")]


def nms_workloads(rng, torch):
    from minidet.ops.nms import nms

    boxes = proposal_like_boxes(rng, NUM_BOXES, 600, 1000).astype(np.float32)
    scores = rng.permutation(NUM_BOXES).astype(np.float32) / NUM_BOXES
    rows = []
    for threshold in (0.3, 0.7):
        ours = (lambda t: lambda: nms(boxes, scores, t))(threshold)
        theirs = None
        if torch is not None:
            import torchvision

            widened = torch.from_numpy(boxes + np.array([0, 0, 1, 1], np.float32))
            tscores = torch.from_numpy(scores)
            theirs = (lambda t: lambda: torchvision.ops.nms(widened, tscores, t))(threshold)
            assert ours().tolist() == theirs().tolist(), "minidet and torchvision keep different boxes"
        rows.append(("nms", f"iou {threshold}", f"{NUM_BOXES} boxes", ours, theirs))
    return rows


def measure(workloads, repeat):
    rows = []
    for name, direction, shape, ours, theirs in workloads:
        mine = time_call(ours, repeat=repeat, warmup=1)
        row = {"name": name, "direction": direction, "shape": shape,
               "minidet_median_s": mine["median_s"], "minidet_min_s": mine["min_s"]}
        text = "torch -"
        if theirs is not None:
            ref = time_call(theirs, repeat=repeat, warmup=1)
            row |= {"torch_median_s": ref["median_s"], "torch_min_s": ref["min_s"],
                    "ratio": mine["median_s"] / ref["median_s"], "ratio_of_minima": mine["min_s"] / ref["min_s"]}
            text = (f"torch {ref['median_s'] * 1e3:8.1f} ms  ratio {row['ratio']:.2f} "
                    f"(of minima {row['ratio_of_minima']:.2f})")
        print(f"{name:<8} {direction:<17} minidet {mine['median_s'] * 1e3:8.1f} ms  {text}", flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_kernel_arguments(kernel_parser(__doc__, RESULTS), argv)
    import minidet._ext.nms  # noqa: F401
    import minidet._ext.roi_pool  # noqa: F401

    try:  # and should OpenMP already have started, set the live value
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads, user_api="openmp")  # noqa: F841 (kept for the run)
    except ImportError:
        pass
    torch = None if args.no_torch else import_torch(args.threads)

    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    rows = measure(roi_pool_workloads(rng, torch) + nms_workloads(rng, torch), args.repeat)
    # the 1-minute load average before and after: other work on a shared machine slows both sides
    write_json(args.out, {"benchmark": "bench_roi_pool", "repeat": args.repeat, "dtype": "float32",
                          "machine": machine_info(args.threads), "load_average": [load_before[0], os.getloadavg()[0]],
                          "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
