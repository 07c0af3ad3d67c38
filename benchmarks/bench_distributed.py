"""Data-parallel costs on this machine: the all-reduce against gradient size, and a small train step split
into compute and communication, on 1 and 2 MPI ranks.

    python benchmarks/bench_distributed.py [--ranks 1,2] [--sizes-mb 1,4,16,64,256,553] [--repeat 5] [--quick]

For each number of ranks W the script starts `mpiexec -n W` on itself (the worker). Measured:
- allreduce: a float32 buffer of each size summed in place by MPI_Allreduce (mpi4py, numpy), and
  the whole `MPICommunicator.allreduce_gradients` of a gradient of that size (pack x R_k into the
  flat buffer, the all-reduce, the division by R); 553 MB is VGG16's 138.4M parameters in float32.
  Reported: the slowest rank's median seconds, and the bus bandwidth 2 (W-1)/W x bytes / seconds
  (what a ring all-reduce moves per rank; 0 for one rank).
- step: FastRCNN.small(num_classes=6) (1.9M parameters, 7.7 MB of gradient), one 300x300 image and
  64 random RoIs per rank: forward + loss + backward (compute), allreduce_gradients
  (communication), the SGD step (update); each rank's medians, the slowest rank reported.
Each rank runs one BLAS thread. Written to benchmarks/results/bench_distributed.json with the
machine and the MPI library. The ranks share this machine's cores (and other work on it): on a
2-core machine two ranks compute at the same time, so their compute time is no speed-up figure.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, write_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_distributed.json")
VGG16_PARAMETERS = 138_357_544


def timed(fn, comm, repeat, warmup=1):
    """Median seconds of fn() on this rank, each call started together on every rank (a barrier)."""
    for _ in range(warmup):
        comm.barrier()
        fn()
    times = []
    for _ in range(repeat):
        comm.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_allreduce(comm, sizes_mb, repeat):
    import numpy as np

    MPI = comm.MPI
    rows = []
    for mb in sizes_mb:
        count = int(mb * 1e6) // 4
        buffer = np.ones(count, np.float32)
        grads = {"w": np.ones(count, np.float32)}
        parts = dict(loss_cls=np.float32(1), loss_bbox=np.float32(0.5), accuracy=np.float32(0.5))
        n = max(2, repeat if mb <= 64 else repeat // 2)
        raw = timed(lambda: comm.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM), comm, n)
        full = timed(lambda: comm.allreduce_gradients(grads, np.float32(1.5), parts, rois=64), comm, n)
        raw, full = max(comm.allgather(raw)), max(comm.allgather(full))
        factor = 2 * (comm.size - 1) / comm.size
        rows.append({"megabytes": mb, "elements": count, "mpi_allreduce_s": raw, "allreduce_gradients_s": full,
                     "bus_gb_per_s": factor * 4 * count / raw / 1e9 if factor else 0.0, "runs": n})
        del buffer, grads
        comm._gradients = None                  # free the flat buffer before the next size
    return rows


def bench_step(comm, repeat):
    import numpy as np

    from benchmarks.bench_model import random_rois, training_targets
    from minidet.losses import fast_rcnn_loss
    from minidet.models.fast_rcnn import FastRCNN
    from minidet.optim import SGD

    rng = np.random.default_rng(comm.rank)
    model = FastRCNN.small(num_classes=6)
    comm.bcast_params(model)
    optimizer = SGD(model.trainable_params(), lr=1e-4)
    images = rng.standard_normal((1, 3, 300, 300)).astype(np.float32)
    rois = random_rois(rng, 64, 1, 300, 300)
    labels, targets, weights = training_targets(rng, 64, model.num_classes)
    state = {}

    def compute():
        cls_score, bbox_pred = model.train().forward(images, rois)
        loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, labels, targets, weights, details=True)
        model.backward(dcls, dbbox)
        state.update(loss=loss, parts=parts)

    def communicate():
        state["grads"], _ = comm.allreduce_gradients(model.grads(), state["loss"], state["parts"], rois=len(labels))

    seconds = {"compute_s": [], "communicate_s": [], "update_s": []}
    for k in range(repeat + 1):
        for key, fn in (("compute_s", compute), ("communicate_s", communicate),
                        ("update_s", lambda: optimizer.step(state["grads"]))):
            comm.barrier()
            start = time.perf_counter()
            fn()
            if k:                               # the first step warms up
                seconds[key].append(time.perf_counter() - start)
    mine = {key: statistics.median(v) for key, v in seconds.items()}
    every = comm.allgather(mine)
    parameters = sum(v.size for v in model.trainable_params().values())
    return {"parameters": int(parameters), "gradient_megabytes": 4 * parameters / 1e6, "runs": repeat,
            **{key: max(m[key] for m in every) for key in mine}}


def worker(args):
    from minidet.distributed import MPICommunicator

    comm = MPICommunicator()
    result = {"ranks": comm.size, "allreduce": bench_allreduce(comm, args.sizes_mb, args.repeat),
              "step": bench_step(comm, args.repeat)}
    if comm.is_root:
        result["mpi"] = comm.MPI.Get_library_version().splitlines()[0].strip()
        with open(args.worker, "w") as f:
            json.dump(result, f)


def parse_list(text, kind):
    return [kind(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=lambda t: parse_list(t, int), default=[1, 2])
    parser.add_argument("--sizes-mb", type=lambda t: parse_list(t, float), default=[1, 4, 16, 64, 256, 553])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="sizes up to 16 MB, 2 repeats (a smoke test)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)       # set for the mpiexec'd copies
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes_mb, args.repeat = [s for s in args.sizes_mb if s <= 16], 2
    if args.worker:
        return worker(args)
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("bench_distributed: no mpiexec found (pip install mpi4py mpich)")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      os.environ.get("PYTHONPATH")) if p))
    with open("/proc/loadavg") as f:
        load_before = [float(x) for x in f.read().split()[:3]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.ranks:
            out = os.path.join(tmp, f"ranks{w}.json")
            command = [mpiexec, "-n", str(w), sys.executable, os.path.abspath(__file__), "--worker", out,
                       "--sizes-mb", ",".join(map(str, args.sizes_mb)), "--repeat", str(args.repeat)]
            print("$", " ".join(command), flush=True)
            subprocess.run(command, env=env, check=True, timeout=1800)
            with open(out) as f:
                runs.append(json.load(f))
    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    info = machine_info(threads=1)        # this process's view; the ranks ran with the variables below
    results = {"benchmark": "bench_distributed", "machine": info, "loadavg_before": load_before,
               "loadavg_after": load, "rank_environment": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
               "vgg16_gradient_megabytes": 4 * VGG16_PARAMETERS / 1e6, "runs": runs}
    if not args.quick:
        write_json(RESULTS, results)
    for run in runs:
        print(f"{run['ranks']} rank(s), {run.get('mpi', '')}")
        for row in run["allreduce"]:
            print(f"  {row['megabytes']:>6g} MB  MPI_Allreduce {row['mpi_allreduce_s'] * 1e3:9.2f} ms  "
                  f"allreduce_gradients {row['allreduce_gradients_s'] * 1e3:9.2f} ms  bus {row['bus_gb_per_s']:.2f} GB/s")
        s = run["step"]
        print(f"  step ({s['parameters'] / 1e6:.2f}M parameters): compute {s['compute_s'] * 1e3:.1f} ms, "
              f"communicate {s['communicate_s'] * 1e3:.2f} ms, update {s['update_s'] * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
