"""Where the time of VGG16 Fast R-CNN goes, layer by layer and by kind of work, minidet beside torch.

    python benchmarks/bench_profile.py [--repeat 2] [--threads 2] [--clock wall|cpu] [--no-torch]

Two workloads, as benchmarks/bench_model.py: the training step (2 images of 224x320, 128 RoIs,
conv3_1 and above trained) and the test forward (1 image of 320x480, 1000 RoIs).

minidet: every layer's forward and backward is timed, and inside the convolutions the calls that
do the work:
    conv gemm        numpy.matmul: the convolutions' GEMMs (BLAS)
    conv transforms  im2col, col2im and the Winograd transforms
    conv other       the rest of a convolution: bias, gathering dy, zeroing dx, the bias gradient
    fully connected  fc6, fc7 and the two heads: one GEMM each (BLAS) and its bias
    roi_pool         RoI pooling, forward and backward
    max_pool         the four max poolings
    elementwise      ReLU, dropout, flatten and the loss
    python           the rest of the step: the time outside every layer (the loop, the calls)
and "blas" = conv gemm + fully connected, "conv" = the three conv parts.
torch: its time on the same clock, shared out by torch.profiler's self CPU time per operator and
grouped the same way (a convolution is one operator: "conv" holds all its work; "fully connected"
is addmm and mm).

Writes benchmarks/results/bench_profile.json and bench_profile.png (per-layer bars of minidet and the
shares of both frameworks).
"""
import argparse
import os
import sys
import threading
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_model import TorchFastRCNN, random_rois, training_targets  # noqa: E402
from benchmarks.common import import_torch, machine_info, write_json  # noqa: E402
from minidet import losses  # noqa: E402
from minidet.models.fast_rcnn import FastRCNN  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_profile.json")
CATEGORIES = ("conv gemm", "conv transforms", "conv other", "fully connected", "roi_pool", "max_pool",
              "elementwise", "python")
TORCH_GROUPS = {  # operator name fragments -> category
    "convolution": "conv", "conv2d": "conv", "addmm": "fully connected", "aten::mm": "fully connected",
    "roi_pool": "roi_pool", "max_pool": "max_pool",
}


class Profiler:
    """Times every layer of a model and, inside, the functions named in CATEGORIES' definitions."""

    def __init__(self, model, clock):
        import minidet.nn.conv as conv
        from minidet.ops import winograd

        self.clock, self.layers, self.inner = clock, defaultdict(float), defaultdict(float)
        self.busy, self.layer = False, None
        self.patches = []
        for name, layer in model.named_layers():
            for direction in ("forward", "backward"):
                self.patch(layer, direction, self.timed_layer(name, direction, getattr(layer, direction)))
        self.patch(np, "matmul", self.timed_call("gemm", np.matmul))
        self.patch(conv, "batched_matmul", self.timed_call("gemm", conv.batched_matmul))
        for fn in ("im2col", "col2im"):
            self.patch(conv, fn, self.timed_call("transforms", getattr(conv, fn)))
        for fn in ("filter_transform", "filter_transform_adjoint", "input_transform", "input_transform_adjoint",
                   "output_transform", "output_transform_adjoint"):
            self.patch(winograd, fn, self.timed_call("transforms", getattr(winograd, fn)))
        self.patch(losses, "fast_rcnn_loss", self.timed_layer("loss", "forward", losses.fast_rcnn_loss))

    def patch(self, owner, attribute, replacement):
        self.patches.append((owner, attribute, getattr(owner, attribute), attribute in vars(owner)))
        setattr(owner, attribute, replacement)

    def remove(self):
        for owner, attribute, original, own in reversed(self.patches):
            if own:                       # a module's function
                setattr(owner, attribute, original)
            else:                         # a layer's method, which lives on its class
                delattr(owner, attribute)

    def timed_layer(self, name, direction, fn):
        def call(*args, **kwargs):
            start, self.layer = self.clock(), name
            out = fn(*args, **kwargs)
            self.layers[f"{name}.{direction}"] += self.clock() - start
            self.layer = None
            return out
        return call

    def timed_call(self, category, fn):
        """fn, timed when a convolution calls it on the main thread outside another timed call (a
        Winograd layer's batched GEMMs and transforms run on minidet.threads' workers: their time is
        the wall time of the call that shares them out, counted once; the fully connected layers'
        own matmul counts as theirs)."""
        def call(*args, **kwargs):
            if (self.busy or not (self.layer or "").startswith("conv")
                    or threading.current_thread() is not threading.main_thread()):
                return fn(*args, **kwargs)
            self.busy, start = True, self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.inner[category] += self.clock() - start
                self.busy = False
        return call

    def reset(self):
        self.layers.clear()
        self.inner.clear()


def kind_of(layer_name):
    if layer_name.startswith(("fc", "cls_score", "bbox_pred")):
        return "fully connected"
    if layer_name.startswith("roi_pool"):
        return "roi_pool"
    if layer_name.startswith("pool"):
        return "max_pool"
    return "elementwise"              # relu, drop, flatten, loss; conv layers are split below


def categories(layers, inner, total):
    """Seconds per category from the per-layer times and the timed calls inside the convolutions."""
    shares = dict.fromkeys(CATEGORIES, 0.0)
    conv = sum(v for k, v in layers.items() if k.startswith("conv"))
    for name, seconds in layers.items():
        if not name.startswith("conv"):
            shares[kind_of(name)] += seconds
    shares["conv gemm"], shares["conv transforms"] = inner["gemm"], inner["transforms"]
    shares["conv other"] = conv - inner["gemm"] - inner["transforms"]
    shares["python"] = max(total - sum(layers.values()), 0.0)
    return shares


def summary(shares):
    """The shares the comparison needs: BLAS and all of the convolutions."""
    return {"blas": shares.get("conv gemm", 0.0) + shares["fully connected"],
            "conv": shares.get("conv", 0.0) + sum(v for k, v in shares.items() if k.startswith("conv "))}


def profile_minidet(model, work, repeat, clock):
    profiler = Profiler(model, clock)
    try:
        work()                                     # warm-up: buffers, first-call costs
        profiler.reset()
        start = clock()
        for _ in range(repeat):
            work()
        total = (clock() - start) / repeat
        layers = {k: v / repeat for k, v in profiler.layers.items()}
        inner = {k: v / repeat for k, v in profiler.inner.items()}
    finally:
        profiler.remove()
    shares = categories(layers, defaultdict(float, inner), total)
    return {"total_s": total, "layers_s": dict(sorted(layers.items(), key=lambda kv: -kv[1])),
            "categories_s": shares, "summary_s": summary(shares), "conv_inner_s": inner}


def profile_torch(torch, work, repeat, clock):
    """torch's time on the same clock as minidet's, shared out by the profiler's self CPU time per
    operator (the profiler's own totals run on another clock, with its overhead)."""
    work()
    start = clock()
    for _ in range(repeat):
        work()
    total = (clock() - start) / repeat
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            work()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    profiled = sum(ops.values()) or 1.0
    shares = defaultdict(float)
    for key, seconds in ops.items():
        group = next((g for fragment, g in TORCH_GROUPS.items() if fragment in key), "elementwise")
        shares[group] += seconds / profiled * total
    top = {k: v / profiled * total for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:20]}
    shares = {key: shares[key] for key in ("conv", "fully connected", "roi_pool", "max_pool", "elementwise")}
    return {"total_s": total, "categories_s": shares, "summary_s": summary(shares), "top_ops_s": top}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    works = [w for w in ("train_step", "test_forward") if w in results]
    fig, axes = plt.subplots(2, len(works), figsize=(7 * len(works), 11), squeeze=False)
    for column, work in enumerate(works):
        layers = results[work]["minidet"]["layers_s"]
        names = sorted(layers, key=layers.get, reverse=True)[:25][::-1]    # the JSON keeps them by name
        ax = axes[0][column]
        ax.barh(names, [layers[n] * 1e3 for n in names], color="tab:blue")
        ax.set_xlabel("ms per run")
        ax.set_title(f"minidet {work}: the 25 slowest layer calls")
        ax.tick_params(axis="y", labelsize=7)
        ax = axes[1][column]
        frameworks = [f for f in ("minidet", "torch") if f in results[work]]
        keys = [k for k in ("conv", *CATEGORIES) if any(k in results[work][f]["categories_s"] for f in frameworks)]
        left = np.zeros(len(frameworks))
        for key in keys:
            values = np.array([results[work][f]["categories_s"].get(key, 0.0) for f in frameworks])
            ax.barh(frameworks, values, left=left, label=key)
            left += values
        ax.set_xlabel("seconds per run")
        ax.set_title(f"{work}: time by kind of work")
        ax.legend(fontsize=7, ncol=3)
    fig.suptitle(f"VGG16 Fast R-CNN, {results['threads']} threads, {results['clock']} clock, "
                 f"load average {results['load_average'][0]:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--repeat", type=int, default=2, help="profiled runs per workload (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for BLAS, OpenMP and torch")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall seconds (default) or CPU seconds of the process (use with --threads 1)")
    parser.add_argument("--no-torch", action="store_true", help="profile minidet alone")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {RESULTS}; the PNG beside it)")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch = None if args.no_torch else import_torch(args.threads, "profiling minidet alone")
    torchvision = sys.modules["torchvision"] if torch is not None else None

    rng = np.random.default_rng(0)
    model = FastRCNN(num_classes=21, seed=0)
    images = rng.standard_normal((2, 3, 224, 320)).astype(np.float32)
    rois = random_rois(rng, 128, 2, 224, 320)
    targets = training_targets(rng, 128, model.num_classes)
    test_images = rng.standard_normal((1, 3, 320, 480)).astype(np.float32)
    test_rois = random_rois(rng, 1000, 1, 320, 480)

    def train_step():
        cls_score, bbox_pred = model.train().forward(images, rois)
        _, dcls, dbbox = losses.fast_rcnn_loss(cls_score, bbox_pred, *targets)
        model.backward(dcls, dbbox)

    results = {"benchmark": "bench_profile", "machine": machine_info(args.threads), "threads": args.threads,
               "clock": args.clock, "repeat": args.repeat, "load_average": os.getloadavg(),
               "algorithms": {n: layer.choose_algorithm(np.zeros((1, layer.in_channels, 8, 8), np.float32))
                              for n, layer in model.named_layers() if n.startswith("conv")},
               "train_step": {"images": [2, 3, 224, 320], "rois": 128},
               "test_forward": {"images": [1, 3, 320, 480], "rois": 1000}}
    print("minidet train step ...", flush=True)
    results["train_step"]["minidet"] = profile_minidet(model, train_step, args.repeat, clock)
    print("minidet test forward ...", flush=True)
    results["test_forward"]["minidet"] = profile_minidet(model, lambda: model.eval().forward(test_images, test_rois),
                                                         args.repeat, clock)
    if torch is not None:
        net = TorchFastRCNN(model, torch, torchvision)
        t_train = [torch.from_numpy(a) for a in (images, rois, *targets)]
        t_test = torch.from_numpy(test_images), torch.from_numpy(test_rois)
        print("torch train step ...", flush=True)
        results["train_step"]["torch"] = profile_torch(torch, lambda: net.train_step(*t_train), args.repeat, clock)
        print("torch test forward ...", flush=True)
        results["test_forward"]["torch"] = profile_torch(torch, lambda: net.test_forward(*t_test), args.repeat,
                                                         clock)
    results["load_average_after"] = os.getloadavg()
    write_json(args.out, results)
    try:
        plot(results, os.path.splitext(args.out)[0] + ".png")
    except ImportError as err:
        print(f"no bar chart: {err} (the JSON holds every figure)")
    for work in ("train_step", "test_forward"):
        for framework in ("minidet", "torch"):
            if framework in results[work]:
                entry = results[work][framework]
                parts = "  ".join(f"{k} {v:.3f}" for k, v in sorted(entry["categories_s"].items(), key=lambda kv: -kv[1]))
                print(f"{work:<13} {framework:<8} {entry['total_s']:.3f} s   blas {entry['summary_s']['blas']:.3f}"
                      f"  conv {entry['summary_s']['conv']:.3f}  |  {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
