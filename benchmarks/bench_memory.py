"""Peak resident memory of one VGG16 Fast R-CNN training step, minidet against torch, each alone.

    python benchmarks/bench_memory.py [--size 600x1000] [--rois 128] [--steps 1] [--threads 2]

Each framework runs in a subprocess of its own (a fresh interpreter: nothing of the other's
allocations or libraries), builds the network (VGG16, conv3_1 and above trained, as the paper),
runs `--steps` training steps (forward, loss, backward) on 2 images of --size with --rois RoIs, and
reports its peak resident set (VmHWM of /proc/self/status, and ru_maxrss), its resident set before
the first step, and the bytes of its parameters. The torch network is built from
torch.nn.functional as in benchmarks/bench_model.py; its RoI pooling is torchvision's when
torchvision imports, else minidet's kernels wrapped in a torch.autograd.Function (a few MB either way).

minidet's network is taken with the changes proposed for its model (ReLU(inplace=True) in the trunk;
no kept state in the layers below the lowest trained one): --model-as-is measures the model as it is.
Results: benchmarks/results/bench_memory.json (ratio minidet / torch of the peaks).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, write_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_memory.json")
GIB = 1 << 30


def parse_size(text):
    h, w = text.lower().split("x")
    return int(h), int(w)


def resident_kib(field):
    """VmHWM (peak) or VmRSS (now) of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def inputs(size, rois, num_classes):
    from benchmarks.bench_model import random_rois, training_targets

    rng = np.random.default_rng(0)
    h, w = size
    images = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    return images, random_rois(rng, rois, 2, h, w), training_targets(rng, rois, num_classes)


def apply_model_changes(model):
    """The model-side changes proposed with the shared workspace (no-ops once the model makes them):
    the trunk's ReLUs write over their convolution's output, and the layers below the lowest
    trained one keep nothing for a backward that never reaches them."""
    from minidet.nn.activation import ReLU

    for index, (name, layer) in enumerate(model.named_layers()):
        if isinstance(layer, ReLU) and name.startswith("relu") and name[4:5].isdigit():
            layer.inplace = True
        if index < model.lowest_trained and hasattr(layer, "needs_input_grad"):
            layer.needs_input_grad = False


def run_minidet(args):
    from minidet.losses import fast_rcnn_loss
    from minidet.models.fast_rcnn import FastRCNN
    from minidet.nn.conv import SHARED_WORKSPACE

    model = FastRCNN(num_classes=21, seed=0)
    if not args.model_as_is:
        apply_model_changes(model)
    images, rois, targets = inputs(args.size, args.rois, model.num_classes)
    before = resident_kib("VmRSS")
    for _ in range(args.steps):
        cls_score, bbox_pred = model.train().forward(images, rois)
        loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, *targets)
        model.backward(dcls, dbbox)
    params = sum(v.nbytes for v in model.params().values())
    return {"rss_before_step_kib": before, "param_bytes": params, "workspace_bytes": SHARED_WORKSPACE.nbytes,
            "loss": float(loss), "model_changes_applied": not args.model_as_is}


class MinidetRoIPool:
    """torch.autograd.Function over minidet's RoI pooling kernels, for a torch without torchvision."""

    @staticmethod
    def make(torch):
        from minidet.ops.roi_pool import roi_pool, roi_pool_backward

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, rois, output_size, spatial_scale):
                y, argmax = roi_pool(x.detach().numpy(), rois.numpy(), output_size, spatial_scale)
                ctx.saved = argmax, tuple(x.shape), rois.numpy()
                return torch.from_numpy(y)

            @staticmethod
            def backward(ctx, dy):
                argmax, shape, rois = ctx.saved
                return torch.from_numpy(roi_pool_backward(dy.numpy(), argmax, shape, rois)), None, None, None

        return lambda x, rois, output_size, spatial_scale: Function.apply(x, rois, output_size, spatial_scale)


def run_torch(args):
    import types

    import torch

    from benchmarks.bench_model import TorchFastRCNN
    from minidet.models.fast_rcnn import FastRCNN

    torch.set_num_threads(args.threads)
    try:
        import torchvision.ops

        vision, pooling = sys.modules["torchvision"], "torchvision.ops.roi_pool"
    except ImportError:
        vision = types.SimpleNamespace(ops=types.SimpleNamespace(roi_pool=MinidetRoIPool.make(torch)))
        pooling = "minidet roi_pool in a torch.autograd.Function"
    model = FastRCNN(num_classes=21, seed=0)
    net = TorchFastRCNN(model, torch, vision)
    del model                                   # the torch copies of the parameters are all it needs
    images, rois, targets = inputs(args.size, args.rois, 21)
    tensors = [torch.from_numpy(a) for a in (images, rois, *targets)]
    before = resident_kib("VmRSS")
    for _ in range(args.steps):
        loss = net.train_step(*tensors)
    params = sum(t.numel() * t.element_size() for t in net.params.values())
    return {"rss_before_step_kib": before, "param_bytes": params, "loss": loss, "roi_pooling": pooling,
            "torch": torch.__version__}


def worker(args):
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.threads)
    start = time.perf_counter()
    report = (run_minidet if args.worker == "minidet" else run_torch)(args)
    report |= {"seconds": time.perf_counter() - start, "peak_kib": resident_kib("VmHWM"),
               "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    print("RESULT " + json.dumps(report), flush=True)


def measure(framework, args):
    command = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--size", "x".join(map(str, args.size)),
               "--rois", str(args.rois), "--steps", str(args.steps), "--threads", str(args.threads)]
    if args.model_as_is:
        command.append("--model-as-is")
    print(f"{framework}: {' '.join(command[2:])} ...", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the {framework} run failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size", type=parse_size, default=(600, 1000), help="HxW of the 2 images (default 600x1000)")
    parser.add_argument("--rois", type=int, default=128, help="RoIs of the batch (default 128)")
    parser.add_argument("--steps", type=int, default=1, help="training steps per run (default 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for BLAS, OpenMP and torch")
    parser.add_argument("--frameworks", default="minidet,torch", help="comma-separated: minidet, torch")
    parser.add_argument("--model-as-is", action="store_true", help="minidet's model without the proposed changes")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {RESULTS})")
    parser.add_argument("--worker", choices=("minidet", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    results = {"benchmark": "bench_memory", "machine": machine_info(args.threads), "images": [2, 3, *args.size],
               "rois": args.rois, "steps": args.steps, "load_average": os.getloadavg()}
    for framework in args.frameworks.split(","):
        results[framework] = measure(framework, args)
        peak = results[framework]["peak_kib"] / (1 << 20)
        print(f"{framework:<8} peak {peak:6.2f} GiB   before the step "
              f"{results[framework]['rss_before_step_kib'] / (1 << 20):5.2f} GiB   {results[framework]['seconds']:.0f} s")
    if "minidet" in results and "torch" in results:
        results["ratio_minidet_over_torch"] = results["minidet"]["peak_kib"] / results["torch"]["peak_kib"]
        print(f"ratio minidet / torch: {results['ratio_minidet_over_torch']:.2f}")
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
