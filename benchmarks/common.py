"""Shared by the benchmarks: timing, a description of the machine, JSON output."""
import json
import os
import platform
import statistics
import time

import numpy as np

from minidet.atomic import atomic_write


def time_call(fn, repeat=5, warmup=1):
    """Median and minimum wall seconds of fn() over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeat}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def vector_unit():
    """The widest x86 vector unit the CPU reports ("AVX-512", "AVX2", ...): the machines these
    benchmarks run on change between AVX2 and AVX-512, and the ratios with them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
        if flag in flags:
            return name
    return "unknown"


def machine_info(threads=None):
    """What the numbers were measured on: CPU, cores, library versions, thread counts."""
    info = {
        "cpu": cpu_model(),
        "vector_unit": vector_unit(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def write_json(path, results):
    """Write results (a dict) as JSON, atomically (minidet.atomic), creating the folder."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}")


def kernel_parser(doc, results):
    """The options of the kernel benchmarks (bench_roi_pool.py, bench_roi_align.py): --repeat,
    --threads, --no-torch, --out; `doc` is the script's docstring (summary, body, epilog)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for minidet's OpenMP kernels and for torch (default 2)")
    parser.add_argument("--no-torch", action="store_true", help="time minidet alone")
    parser.add_argument("--out", default=results, help=f"JSON output (default {os.path.relpath(results)})")
    return parser


def parse_kernel_arguments(parser, argv):
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    # prange's team size: OpenMP reads this when it starts, which is at the first import of a kernel
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    return args


def import_torch(threads, doing="timing minidet alone"):
    """torch with torchvision's ops, on `threads` threads, or None (and a line saying so) when either
    is missing; torchvision is then sys.modules["torchvision"]."""
    try:
        import torch
        import torchvision.ops  # noqa: F401
    except ImportError as err:
        print(f"torch/torchvision unavailable ({err}): {doing}")
        return None
    torch.set_num_threads(threads)
    return torch
