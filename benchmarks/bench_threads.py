"""Thread robustness on the CPU: minidet with its default threads against one thread, on a busy machine.

    python benchmarks/bench_threads.py [--load 4] [--rounds 3] [--repeat 3] [--quick]

A 2-core machine shared with other work punishes every parallel call: its second thread
waits for a core, and a kernel or GEMM split over 2 threads can take tens of times longer
than on one. This benchmark times, in a fresh process per configuration (thread settings
are read when OpenMP and OpenBLAS load):
- small_step: the train step of FastRCNN.small(num_classes=6) (2 images of 300x300, 128
  random RoIs; forward, fast_rcnn_loss, backward), whose many thin layers are short calls;
- conv3_1, conv4_2: Conv2d forward + backward on VGG16's shapes of benchmarks/bench_layers.py
  (2 images of 224x320), large enough that 2 threads pay off on an idle machine.
Configurations: "default" (no thread variable set: what a user gets), "one_thread"
(OMP_NUM_THREADS=1: OpenMP and OpenBLAS on one thread) and "passive" (OMP_WAIT_POLICY=PASSIVE).
The configurations run interleaved, `--rounds` times, so that a change in the neighbours'
load hits them alike; each run times `--repeat` calls after a warm-up. Reported per workload
and configuration: median and minimum wall seconds over all calls, median CPU seconds of
the process (its spinning threads included), and the ratio of medians default / one_thread.
`--load N` starts N busy processes for the duration, to reproduce a busy machine on an idle one.
Written to benchmarks/results/bench_threads.json, with the load averages before and after.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, write_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_threads.json")
WORKLOADS = ("small_step", "conv3_1", "conv4_2")
CONFIGS = {"default": {}, "one_thread": {"OMP_NUM_THREADS": "1"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
# Variables that set thread counts or waiting; cleared in the children so that "default" is the default.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS",
                    "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DYNAMIC", "OMP_PROC_BIND")
CONV_SHAPES = {"conv3_1": (2, 128, 256, 56, 80), "conv4_2": (2, 512, 512, 28, 40)}  # N, C, F, H, W


def small_step_workload():
    import numpy as np

    from benchmarks.bench_model import random_rois, training_targets
    from minidet.losses import fast_rcnn_loss
    from minidet.models.fast_rcnn import FastRCNN

    rng = np.random.default_rng(0)
    model = FastRCNN.small(num_classes=6)
    images = rng.standard_normal((2, 3, 300, 300)).astype(np.float32)
    rois = random_rois(rng, 128, 2, 300, 300)
    targets = training_targets(rng, 128, model.num_classes)

    def step():
        cls_score, bbox_pred = model.train().forward(images, rois)
        loss, dcls_score, dbbox_pred = fast_rcnn_loss(cls_score, bbox_pred, *targets)
        model.backward(dcls_score, dbbox_pred)
        return float(loss)

    return step


def conv_workload(name):
    import numpy as np

    from minidet.nn.conv import Conv2d

    n, c, f, h, w = CONV_SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    dy = rng.standard_normal((n, f, h, w), dtype=np.float32)
    conv = Conv2d(c, f, 3, padding=1, rng=rng)
    return lambda: (conv.forward(x), conv.backward(dy))


def child(workload, repeat):
    """Time `repeat` calls of one workload after a warm-up; print wall and CPU seconds as JSON."""
    fn = small_step_workload() if workload == "small_step" else conv_workload(workload)
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu}))


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def run_child(workload, config, repeat, timeout):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES} | CONFIGS[config]
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workload, "--repeat", str(repeat)],
                         env=env, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all configurations (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per run (default 3)")
    parser.add_argument("--load", type=int, default=0, help="busy processes to start for the duration (default 0)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="1 round of 2 calls, for a smoke test")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per run (default 300)")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {os.path.relpath(RESULTS)})")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.repeat)
        return 0
    rounds, repeat = (1, 2) if args.quick else (args.rounds, args.repeat)

    load_before = os.getloadavg()
    spinners = [multiprocessing.Process(target=busy, args=(24 * 3600,), daemon=True) for _ in range(args.load)]
    for p in spinners:
        p.start()
    times = {(w, c): {"wall_s": [], "cpu_s": []} for w in args.workloads for c in args.configs}
    try:
        for round_index in range(rounds):
            for workload in args.workloads:
                for config in args.configs:
                    result = run_child(workload, config, repeat, args.timeout)
                    for key in ("wall_s", "cpu_s"):
                        times[workload, config][key] += result[key]
                    print(f"round {round_index + 1}/{rounds} {workload:<10} {config:<10} wall "
                          + " ".join(f"{t:.3f}" for t in result["wall_s"]), flush=True)
    finally:
        for p in spinners:
            p.terminate()
            p.join()

    rows = []
    for workload in args.workloads:
        medians = {}
        for config in args.configs:
            wall, cpu = times[workload, config]["wall_s"], times[workload, config]["cpu_s"]
            medians[config] = statistics.median(wall)
            rows.append({"workload": workload, "config": config, "calls": len(wall),
                         "median_s": medians[config], "min_s": min(wall), "cpu_median_s": statistics.median(cpu)})
        if "default" in medians and "one_thread" in medians:
            rows.append({"workload": workload, "ratio_default_to_one_thread":
                         medians["default"] / medians["one_thread"]})
    print(f"\n{'workload':<10} {'config':<10} {'median s':>9} {'min s':>8} {'cpu s':>8}")
    for row in rows:
        if "config" in row:
            print(f"{row['workload']:<10} {row['config']:<10} {row['median_s']:9.3f} {row['min_s']:8.3f} "
                  f"{row['cpu_median_s']:8.3f}")
        else:
            print(f"{row['workload']:<10} default / one_thread: {row['ratio_default_to_one_thread']:.2f}")
    write_json(args.out, {"benchmark": "bench_threads", "rounds": rounds, "repeat": repeat, "load": args.load,
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                          "machine": machine_info(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
