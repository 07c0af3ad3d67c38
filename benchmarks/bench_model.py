"""The whole VGG16 Fast R-CNN on the CPU, minidet against the same network in torch, side by side.

    python benchmarks/bench_model.py --repeat 2 [--rounds 2] [--threads 2] [--profile] [--svd] [--accuracy]

Two workloads, the paper's shapes at a reduced image size:
- train step: 2 images of 224x320, 128 RoIs, forward + loss + backward (conv3_1 and above trained);
- test forward: 1 image of 320x480, 1000 RoIs.
The torch network is built from torch.nn.functional (conv2d, relu, max_pool2d with ceil_mode,
linear, dropout) and torchvision.ops.roi_pool, with minidet's weights, on the same thread count.
minidet and torch are timed in blocks, one after the other, --rounds times; the ratios (minidet
time / torch time; below 1 means minidet is faster, medians over the rounds) go to
benchmarks/results/bench_model.json, with the load average before and after and the algorithm of
every convolution. --accuracy adds the float32 network's outputs against the same network in
float64 with im2col convolutions (the reference): the test forward's cls_score and bbox_pred and
the training step's loss and gradients, as max |a32 - a64| / max |a64|, on real VGG16 weights and a
real image when ../shared/data holds them (random data otherwise). --profile adds minidet's time per layer (forward and
backward) and torch's time per operator; --svd adds the truncated-SVD report of the test forward
(fc6 rank 1024, fc7 rank 256: fc time before and after, change of the outputs). Every run also
writes `arithmetic_floor`: each workload's GEMM flops (fully connected layers, and convolutions in
the algorithm each ran) at the best float32 GEMM rate numpy or torch reach on this machine, as
seconds and as a share of torch's whole workload: a floor under any implementation of the same
arithmetic, with everything but the products free.
"""
import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import import_torch, machine_info, time_call, write_json  # noqa: E402
from minidet.losses import fast_rcnn_loss  # noqa: E402
from minidet.models.fast_rcnn import FastRCNN  # noqa: E402
from minidet.nn.dropout import Dropout  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_model.json")


def parse_size(text):
    h, w = text.lower().split("x")
    return int(h), int(w)


def random_rois(rng, num_rois, num_images, height, width):
    """(R, 5) float32 [batch index, x1, y1, x2, y2]: boxes of 16 px up to the whole image."""
    x1 = rng.uniform(0, width - 16, num_rois)
    y1 = rng.uniform(0, height - 16, num_rois)
    x2 = np.minimum(x1 + rng.uniform(16, width, num_rois), width - 1)
    y2 = np.minimum(y1 + rng.uniform(16, height, num_rois), height - 1)
    batch = np.sort(rng.integers(0, num_images, num_rois))
    return np.stack([batch, x1, y1, x2, y2], axis=1).astype(np.float32)


def training_targets(rng, num_rois, num_classes):
    labels = rng.integers(0, num_classes, num_rois)
    labels[: num_rois * 3 // 4] = 0            # 25% foreground, as the sampler draws them
    bbox_targets = rng.standard_normal((num_rois, 4 * num_classes)).astype(np.float32)
    bbox_weights = np.zeros((num_rois, 4 * num_classes), np.float32)
    columns = 4 * labels[:, None] + np.arange(4)
    bbox_weights[np.arange(num_rois)[:, None], columns] = labels[:, None] > 0
    return labels, bbox_targets, bbox_weights


# ---- minidet ---------------------------------------------------------------------------------

def minidet_train_step(model, images, rois, targets):
    cls_score, bbox_pred = model.train().forward(images, rois)
    loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, *targets)
    model.backward(dcls, dbbox)
    return float(loss)


class LayerTimer:
    """Wraps every layer's forward and backward to add up wall time per (layer, direction)."""

    def __init__(self, model):
        self.seconds = defaultdict(float)
        self.originals = []
        for name, layer in model.named_layers():
            for direction in ("forward", "backward"):
                original = getattr(layer, direction)
                self.originals.append((layer, direction))
                setattr(layer, direction, self.timed(name, direction, original))

    def timed(self, name, direction, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[f"{name}.{direction}"] += time.perf_counter() - start
            return out
        return call

    def remove(self):
        for layer, direction in self.originals:
            delattr(layer, direction)   # back to the class's method

    def table(self, runs):
        total = sum(self.seconds.values())
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return {"total_s": total / runs,
                "per_layer_s": {k: v / runs for k, v in rows},
                "share": {k: v / total for k, v in rows}}


# ---- torch -----------------------------------------------------------------------------------

class TorchFastRCNN:
    """The same network in torch.nn.functional, holding copies of a minidet model's parameters."""

    def __init__(self, model, torch, torchvision):
        self.torch, self.F, self.roi_pool = torch, torch.nn.functional, torchvision.ops.roi_pool
        trained = {k.split(".")[0] for k in model.trainable_params()}
        self.params = {k: torch.from_numpy(v.copy()).requires_grad_(k.split(".")[0] in trained)
                       for k, v in model.state_dict().items()}
        self.dropout = model.dropout

    def forward(self, images, rois, train):
        F, p = self.F, self.params
        x = images
        for stage, count in enumerate((2, 2, 3, 3, 3), 1):
            for i in range(1, count + 1):
                name = f"conv{stage}_{i}"
                x = F.relu(F.conv2d(x, p[name + ".weight"], p[name + ".bias"], padding=1))
            if stage < 5:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = self.roi_pool(x, rois, (7, 7), 1 / 16).flatten(1)
        x = F.dropout(F.relu(F.linear(x, p["fc6.weight"], p["fc6.bias"])), self.dropout, train)
        x = F.dropout(F.relu(F.linear(x, p["fc7.weight"], p["fc7.bias"])), self.dropout, train)
        return (F.linear(x, p["cls_score.weight"], p["cls_score.bias"]),
                F.linear(x, p["bbox_pred.weight"], p["bbox_pred.bias"]))

    def train_step(self, images, rois, labels, bbox_targets, bbox_weights):
        for t in self.params.values():
            t.grad = None
        cls_score, bbox_pred = self.forward(images, rois, train=True)
        loss = (self.F.cross_entropy(cls_score, labels)
                + (bbox_weights * self.F.smooth_l1_loss(bbox_pred, bbox_targets, reduction="none", beta=1.0)).sum()
                / len(rois))
        loss.backward()
        return float(loss.detach())

    def test_forward(self, images, rois):
        with self.torch.no_grad():
            return self.forward(images, rois, train=False)


def accuracy_report(model, test_rois, train_rois, targets, size):  # noqa: C901
    """float32 outputs and gradients of `model` against a float64 im2col copy of it (max error / max)."""
    import cv2

    shared = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
    weights = os.path.join(shared, "weights", "vgg16_hed_conv.npz")
    image_path = os.path.join(shared, "fast-rcnn-demo", "000004.jpg")
    report = {"data": "random"}
    rng = np.random.default_rng(1)
    images = rng.standard_normal((1, 3, *size)).astype(np.float32)
    if os.path.exists(weights) and os.path.exists(image_path) and model.width == 1:
        from minidet.data.transforms import normalize
        from minidet.weights import load_weights

        state, convention = load_weights(weights)
        model.load_state_dict(state, strict=False)
        image = cv2.resize(cv2.imread(image_path), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        images = normalize(image, convention)[None]
        report["data"] = {"weights": weights, "image": image_path, "resized_to": list(size)}
    exact = FastRCNN(num_classes=model.num_classes, width=model.width, fc_dim=model.fc_dim, dtype=np.float64,
                     dropout=0.0)
    exact.load_state_dict(model.state_dict())
    for _, layer in exact.named_layers():
        if hasattr(layer, "algorithm"):
            layer.algorithm = "im2col"
    dropout = model.dropout
    for _, layer in model.named_layers():
        if isinstance(layer, Dropout):
            layer.p = 0.0                          # the same network in both precisions
    try:
        def relative(a, b):
            return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())

        ours, theirs = model.eval().forward(images, test_rois), exact.eval().forward(images.astype(np.float64), test_rois)
        report["test_forward"] = {"cls_score": relative(ours[0], theirs[0]), "bbox_pred": relative(ours[1], theirs[1])}
        batch = np.ascontiguousarray(np.concatenate([images, images[..., ::-1]]))   # the image and its mirror
        losses = []
        for net, x in ((model, batch), (exact, batch.astype(np.float64))):
            cls, box = net.train().forward(x, train_rois)
            loss, dcls, dbox = fast_rcnn_loss(cls, box, *targets)
            net.backward(dcls, dbox)
            losses.append(loss)
        reference = exact.grads()
        grads = {name: relative(g, reference[name]) for name, g in model.grads().items()}
        report["train_step"] = {"loss": relative(losses[0], losses[1]), "worst_gradient": max(grads.values()),
                                "gradients": grads}
    finally:
        for _, layer in model.named_layers():
            if isinstance(layer, Dropout):
                layer.p = dropout
    report["algorithms"] = {name: layer.choose_algorithm(images) for name, layer in model.named_layers()
                            if hasattr(layer, "choose_algorithm")}
    return report


def torch_profile(torch, fn, runs):
    """Self CPU time per torch operator, seconds per run, largest first (top 15)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    return {e.key: e.self_cpu_time_total / 1e6 / runs for e in rows}


# ---- main ------------------------------------------------------------------------------------

def gemm_rate(torch=None, sizes=(2048, 4096), repeat=2):
    """The machine's float32 matrix-product rate, flop/s: the best of numpy's and torch's
    (n x n) @ (n x n) over the sizes n, each the fastest of `repeat` runs, on the threads in force
    (generous on purpose: a higher rate makes a lower floor)."""
    rates = []
    for size in sizes:
        a = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
        products = [lambda: a @ a]
        if torch is not None:
            ta = torch.from_numpy(a)
            products.append(lambda: torch.mm(ta, ta))
        rates += [2 * size ** 3 / time_call(fn, repeat=repeat)["min_s"] for fn in products]
    return max(rates)


def layer_flops(model, train, rois):
    """(flops of the fully connected layers, of the convolutions) of the model's last forward, on `rois` RoIs, and,
    train=True, of the backward after it: one pass forward, one for dW if the layer is trained, one
    for dx if a layer below needs it (the convolutions below fc6 are trained, so fc6's dx counts).
    A pass is 2 R in out flops for a Linear of weight (out, in) on R RoIs, and for a convolution the
    products of the algorithm it ran: Winograd's a*a GEMMs, or im2col's 2 F 9C N H W."""
    from minidet.nn.conv import Conv2d
    from minidet.nn.linear import Linear
    from minidet.ops.winograd import direct_flops, winograd_flops

    flops = {"fc": 0, "conv": 0}
    for _, layer in model.named_layers():
        if isinstance(layer, Linear):
            out, inp = layer.params["weight"].shape
            kind, one = "fc", 2 * rois * out * inp
        elif isinstance(layer, Conv2d):
            (n, c, h, w), f = layer.x_shape, layer.out_channels
            kind = "conv"
            one = (direct_flops(n, c, f, h, w) if layer.used == "im2col"
                   else winograd_flops(n, c, f, h, w, int(layer.used[-1])))
        else:
            continue
        flops[kind] += one * (1 + (train and not layer.frozen) + (train and layer.needs_input_grad))
    return flops


def arithmetic_floor(model, works, rate, torch_seconds, rois):
    """A floor under minidet's time for each workload: its GEMMs' flops (layer_flops) at the
    machine's best GEMM rate, the transforms, RoI pooling and all else free; as seconds and as a
    share of torch's whole workload. When the floor's share is above a target, no implementation of
    the same arithmetic on this machine reaches the target."""
    floor = {"gemm_gflops": rate / 1e9}
    for work, fn in works.items():
        fn()
        flops = layer_flops(model, train=work == "train_step", rois=rois[work])
        seconds = {kind: value / rate for kind, value in flops.items()}
        entry = floor[work] = {"gflop": {kind: value / 1e9 for kind, value in flops.items()},
                               "seconds_at_gemm_rate": seconds}
        if work in torch_seconds:
            entry["share_of_torch"] = {kind: value / torch_seconds[work] for kind, value in seconds.items()}
            entry["share_of_torch"]["all"] = sum(seconds.values()) / torch_seconds[work]
    return floor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per measurement (median; default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for BLAS, OpenMP and torch")
    parser.add_argument("--train-size", type=parse_size, default=(224, 320), help="HxW of the 2 training images")
    parser.add_argument("--train-rois", type=int, default=128)
    parser.add_argument("--test-size", type=parse_size, default=(320, 480), help="HxW of the test image")
    parser.add_argument("--test-rois", type=int, default=1000)
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1: VGG16)")
    parser.add_argument("--fc-dim", type=int, default=4096)
    parser.add_argument("--profile", action="store_true", help="time minidet per layer and torch per operator")
    parser.add_argument("--svd", action="store_true", help="truncated-SVD report on the test forward")
    parser.add_argument("--no-torch", action="store_true", help="time minidet alone")
    parser.add_argument("--rounds", type=int, default=2, help="minidet/torch block pairs (default 2)")
    parser.add_argument("--accuracy", action="store_true",
                        help="float32 outputs and gradients against float64 im2col (real weights and image)")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.threads)   # BLAS and OpenMP alike
    torch = None if args.no_torch else import_torch(args.threads)
    torchvision = sys.modules["torchvision"] if torch is not None else None

    rng = np.random.default_rng(0)
    model = FastRCNN(num_classes=21, width=args.width, fc_dim=args.fc_dim, seed=0)
    (th, tw), (sh, sw) = args.train_size, args.test_size
    train_images = rng.standard_normal((2, 3, th, tw)).astype(np.float32)
    train_rois = random_rois(rng, args.train_rois, 2, th, tw)
    targets = training_targets(rng, args.train_rois, model.num_classes)
    test_images = rng.standard_normal((1, 3, sh, sw)).astype(np.float32)
    test_rois = random_rois(rng, args.test_rois, 1, sh, sw)

    results = {"machine": machine_info(args.threads), "repeat": args.repeat, "rounds": args.rounds,
               "load_average": os.getloadavg(),
               "network": {"width": args.width, "fc_dim": args.fc_dim, "trainable_from": model.trainable_from},
               "algorithms": {name: layer.choose_algorithm(train_images)
                              for name, layer in model.named_layers() if hasattr(layer, "choose_algorithm")},
               "train_step": {"images": [2, 3, th, tw], "rois": args.train_rois},
               "test_forward": {"images": [1, 3, sh, sw], "rois": args.test_rois}}
    works = {"train_step": (lambda: minidet_train_step(model, train_images, train_rois, targets), None),
             "test_forward": (lambda: model.eval().forward(test_images, test_rois), None)}
    if torch is not None:
        net = TorchFastRCNN(model, torch, torchvision)
        t_train = [torch.from_numpy(train_images), torch.from_numpy(train_rois), torch.from_numpy(targets[0]),
                   torch.from_numpy(targets[1]), torch.from_numpy(targets[2])]
        t_test = torch.from_numpy(test_images), torch.from_numpy(test_rois)
        works = {"train_step": (works["train_step"][0], lambda: net.train_step(*t_train)),
                 "test_forward": (works["test_forward"][0], lambda: net.test_forward(*t_test))}
    runs = {(work, framework): [] for work in works for framework in ("minidet", "torch")}
    for round_index in range(args.rounds):
        for work, (ours, theirs) in works.items():
            for framework, fn in (("minidet", ours), ("torch", theirs)):
                if fn is not None:
                    print(f"round {round_index + 1}/{args.rounds}: {framework} {work} ...", flush=True)
                    runs[work, framework].append(time_call(fn, repeat=args.repeat))
    for (work, framework), timings in runs.items():
        if timings:
            results[work][framework] = {"median_s": statistics.median(t["median_s"] for t in timings),
                                        "min_s": min(t["min_s"] for t in timings),
                                        "round_medians_s": [t["median_s"] for t in timings]}
    if torch is not None:
        for work in works:
            entry = results[work]
            entry["ratio_minidet_over_torch"] = entry["minidet"]["median_s"] / entry["torch"]["median_s"]
            entry["median_of_round_ratios"] = statistics.median(
                a / b for a, b in zip(entry["minidet"]["round_medians_s"], entry["torch"]["round_medians_s"]))
        results["targets"] = {"train_step": 0.6, "test_forward": 0.45}
    print("the GEMMs' flops at the machine's GEMM rate ...", flush=True)
    results["arithmetic_floor"] = arithmetic_floor(
        model, {work: ours for work, (ours, _) in works.items()}, gemm_rate(torch),
        {work: results[work]["torch"]["median_s"] for work in works if "torch" in results[work]},
        {work: results[work]["rois"] for work in works})
    results["load_average_after"] = os.getloadavg()

    if args.profile:
        print("profiling ...", flush=True)
        timer = LayerTimer(model)
        for _ in range(args.repeat):
            minidet_train_step(model, train_images, train_rois, targets)
        results["train_step"]["minidet_layers"] = timer.table(args.repeat)
        timer.seconds.clear()
        for _ in range(args.repeat):
            model.eval().forward(test_images, test_rois)
        results["test_forward"]["minidet_layers"] = timer.table(args.repeat)
        timer.remove()
        if torch is not None:
            results["train_step"]["torch_ops"] = torch_profile(torch, lambda: net.train_step(*t_train), args.repeat)
            results["test_forward"]["torch_ops"] = torch_profile(torch, lambda: net.test_forward(*t_test),
                                                                 args.repeat)

    if args.svd:
        print("truncated SVD of fc6 (rank 1024) and fc7 (rank 256) ...", flush=True)
        start = time.perf_counter()
        report = model.compress(fc6_rank=1024, fc7_rank=256, images=test_images, rois=test_rois,
                                repeat=args.repeat)
        report["compress_s"] = time.perf_counter() - start   # factorisation and the timing runs
        report["test_forward_after"] = time_call(lambda: model.eval().forward(test_images, test_rois), repeat=args.repeat)
        results["svd"] = report

    if args.accuracy:
        print("float32 against float64 im2col ...", flush=True)
        results["accuracy"] = accuracy_report(model, test_rois, train_rois, targets, (sh, sw))
        print(f"accuracy: test forward {results['accuracy']['test_forward']}, train step loss "
              f"{results['accuracy']['train_step']['loss']:.1e}, worst gradient "
              f"{results['accuracy']['train_step']['worst_gradient']:.1e}")
    write_json(args.out, results)
    for work in ("train_step", "test_forward"):
        entry = results[work]
        line = f"{work:<13} minidet {entry['minidet']['median_s']:.3f} s"
        if "torch" in entry:
            line += f"   torch {entry['torch']['median_s']:.3f} s   ratio {entry['ratio_minidet_over_torch']:.2f}"
        print(line)
        if "minidet_layers" in entry:
            for name, seconds in list(entry["minidet_layers"]["per_layer_s"].items())[:12]:
                print(f"    {name:<22} {seconds * 1000:8.1f} ms  {entry['minidet_layers']['share'][name]:5.1%}")
    floor = results["arithmetic_floor"]
    for work in ("train_step", "test_forward"):
        gflop, share = floor[work]["gflop"], floor[work].get("share_of_torch")
        print(f"floor of {work}: fc {gflop['fc']:.0f} + conv {gflop['conv']:.0f} GFLOP at "
              f"{floor['gemm_gflops']:.0f} GFLOP/s = {sum(floor[work]['seconds_at_gemm_rate'].values()):.3f} s"
              + (f" = {share['all']:.2f}x torch's (fc alone {share['fc']:.2f}x)" if share else ""))
    if "svd" in results:
        r = results["svd"]
        print(f"svd: fc part {r['fc_seconds_before'] * 1000:.1f} -> {r['fc_seconds_after'] * 1000:.1f} ms "
              f"({r['fc_speedup']:.2f}x; multiply-adds {r['fc_macs_ratio']:.2f}x), test forward "
              f"{r['test_forward_after']['median_s']:.3f} s, max score change {r['max_abs_score_change']:.2e}, "
              f"top class kept {r['top_class_agreement']:.1%}, energy kept fc6 {r['fc6']['energy_kept']:.3f} "
              f"fc7 {r['fc7']['energy_kept']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
