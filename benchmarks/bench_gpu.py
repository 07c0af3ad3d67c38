"""minidet on the GPU against the same VGG16 Fast R-CNN in PyTorch on the same GPU.

    python benchmarks/bench_gpu.py [--repeat 5] [--warmup 2] [--modes fp32,tf32] [--out PATH]

Two workloads at the paper's sizes, float32, the paper's network (VGG16, conv3_1 and above trained):
- training iteration: 2 images of 600x1000, 128 RoIs: forward (dropout on) + loss + backward + SGD step
  (momentum 0.9, weight decay 0.0005, biases lr x2 and no decay), the loss read on the host once, as
  minidet's training loop reads it (before the backward);
- test time per image: 1 image of 600x1000, 2000 proposals: forward + predict (softmax, box decoding,
  clipping to the image).
The inputs are on the device before the clock starts, for both. Every run is timed from a synchronised
device to a synchronised device (cupy.cuda.Device().synchronize(), torch.cuda.synchronize()), after
`--warmup` runs that compile the kernels and fill the memory pools and cuDNN/cuBLAS caches.

The torch network is benchmarks/bench_model.py's TorchFastRCNN (torch.nn.functional conv2d, relu,
max_pool2d in ceil mode, linear, dropout, and torchvision.ops.roi_pool) holding minidet's weights,
moved to the GPU; its optimiser is torch.optim.SGD with the same settings.

Numeric modes, each run in its own process: CuPy reads CUPY_TF32 once, at its first float32 matrix
product, so the variable must be set before the process does any. NVIDIA_TF32_OVERRIDE is removed
from the child's environment (0 there would forbid TF32 in every library).
- fp32: CUPY_TF32=0, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False;
- tf32: CUPY_TF32=1, both torch flags True.

Memory, measured on one extra run after the timed ones: for minidet the largest number of bytes in use
in CuPy's memory pool during the run (a cupy.cuda.MemoryHook counts every allocation and release) and
the bytes the pool holds afterwards (its high-water mark: the pool keeps what it has allocated); for
torch, torch.cuda.max_memory_allocated and max_memory_reserved over the same run. Parameters, gradients,
optimiser state and kept buffers count on both sides.

Targets: minidet's training iteration <= 1.5x torch's time, its test time per image <= 1.3x.
Results, with the GPU's name, go to benchmarks/results/bench_gpu.json (--out).

Without CuPy or a CUDA GPU the script prints "no GPU: skipped" and exits with status 0, writing nothing,
so that a CPU-only machine can run every benchmark script. Without torch, torchvision or a CUDA build
of torch (or with --no-torch) it times minidet alone.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, time_call, write_json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_gpu.json")
MODES = ("fp32", "tf32")
TARGETS = {"train_iteration": 1.5, "test_image": 1.3}
NUM_CLASSES = 21


def parse_size(text):
    h, w = text.lower().split("x")
    return int(h), int(w)


def parse_modes(text):
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}, got {text!r}")
    return modes


def build_parser():
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(description=doc[0] + "\n\n" + doc[1] + "\n\n" + doc[2],
                                     epilog="Without a GPU: prints 'no GPU: skipped' and exits 0.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median; default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    parser.add_argument("--modes", type=parse_modes, default=MODES,
                        help="numeric modes to run, comma-separated: fp32, tf32 (default both)")
    parser.add_argument("--train-size", type=parse_size, default=(600, 1000), help="HxW of the 2 training images")
    parser.add_argument("--train-rois", type=int, default=128, help="RoIs of a training batch (default 128)")
    parser.add_argument("--test-size", type=parse_size, default=(600, 1000), help="HxW of the test image")
    parser.add_argument("--test-rois", type=int, default=2000, help="proposals of the test image (default 2000)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms (torch.backends.cudnn.benchmark; "
                             "default: torch's default, off)")
    parser.add_argument("--no-torch", action="store_true", help="time minidet alone")
    parser.add_argument("--out", default=RESULTS, help=f"JSON output (default {RESULTS})")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)       # one mode, in a child process
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser


# ---- the parent: one child process per numeric mode --------------------------------------------

def worker_argv(args, mode, out):
    argv = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--worker-out", out,
            "--repeat", str(args.repeat), "--warmup", str(args.warmup),
            "--train-size", "x".join(map(str, args.train_size)), "--train-rois", str(args.train_rois),
            "--test-size", "x".join(map(str, args.test_size)), "--test-rois", str(args.test_rois)]
    if args.cudnn_benchmark:
        argv.append("--cudnn-benchmark")
    if args.no_torch:
        argv.append("--no-torch")
    return argv


def run_modes(args):
    results = {}
    for mode in args.modes:
        env = dict(os.environ, CUPY_TF32="1" if mode == "tf32" else "0")
        env.pop("NVIDIA_TF32_OVERRIDE", None)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, f"{mode}.json")
            print(f"== mode {mode} (CUPY_TF32={env['CUPY_TF32']}) ==", flush=True)
            done = subprocess.run(worker_argv(args, mode, out), env=env)
            if done.returncode != 0 or not os.path.exists(out):
                print(f"bench_gpu: the {mode} run failed (exit status {done.returncode})", file=sys.stderr)
                return None
            with open(out) as f:
                results[mode] = json.load(f)
    return results


def summarise(args, modes):
    first = next(iter(modes.values()))
    results = {"machine": machine_info(), "gpu": first["gpu"], "repeat": args.repeat, "warmup": args.warmup,
               "train_iteration": {"images": [2, 3, *args.train_size], "rois": args.train_rois},
               "test_image": {"images": [1, 3, *args.test_size], "rois": args.test_rois},
               "targets": TARGETS, "modes": modes}
    meets = {}
    for mode, entry in modes.items():
        if all("ratio_minidet_over_torch" in entry[work] for work in TARGETS):
            meets[mode] = {work: entry[work]["ratio_minidet_over_torch"] <= target for work, target in TARGETS.items()}
    results["meets_targets"] = meets
    return results


def print_table(results):
    print(f"GPU: {results['gpu']['name']}")
    for mode, entry in results["modes"].items():
        for work in TARGETS:
            row = entry[work]
            ours = row["minidet"]
            line = (f"{mode:<5} {work:<16} minidet {ours['median_s'] * 1000:8.1f} ms "
                    f"{ours['peak_bytes_in_use'] / 2**30:6.2f} GiB")
            if "torch" in row:
                theirs = row["torch"]
                line += (f" | torch {theirs['median_s'] * 1000:8.1f} ms "
                         f"{theirs['max_memory_allocated'] / 2**30:6.2f} GiB"
                         f" | time x{row['ratio_minidet_over_torch']:.2f} (target <= {TARGETS[work]})"
                         f" memory x{row['memory_ratio_minidet_over_torch']:.2f}")
            print(line)
        if "max_abs_score_difference" in entry:
            print(f"{mode:<5} test outputs, max |minidet - torch|: scores {entry['max_abs_score_difference']:.2e}, "
                  f"boxes {entry['max_abs_box_difference']:.2e} px")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    from minidet.backend import gpu_available

    if not gpu_available():
        print("no GPU: skipped (bench_gpu needs CuPy and a CUDA GPU; nothing was measured or written)")
        return 0
    modes = run_modes(args)
    if modes is None:
        return 1
    results = summarise(args, modes)
    write_json(args.out, results)
    print_table(results)
    return 0


# ---- the child: one mode, minidet then torch ----------------------------------------------------

def load_torch(no_torch):
    """(torch, torchvision) with a CUDA device, or (None, None) with the reason printed."""
    if no_torch:
        return None, None
    try:
        import torch
        import torchvision.ops  # noqa: F401
    except ImportError as err:
        print(f"torch/torchvision unavailable ({err}): timing minidet alone")
        return None, None
    if not torch.cuda.is_available():
        print("torch sees no CUDA device: timing minidet alone")
        return None, None
    return torch, sys.modules["torchvision"]


def gpu_description(cp, torch):
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    info = {"name": name.decode() if isinstance(name, bytes) else str(name),
            "total_memory_bytes": int(props["totalGlobalMem"]),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion()}
    if torch is not None:
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    torch_device=torch.cuda.get_device_name(0))
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception as err:  # cuDNN missing from the build: torch's convolutions run without it
            info["cudnn"] = f"unavailable ({err})"
    return info


def set_torch_tf32(torch, enabled):
    """Allow or forbid TF32 in torch's cuBLAS matmuls and cuDNN convolutions; the flags as torch reads them back.

    Only the allow_tf32 flags are set: recent torch refuses to read its TF32 state once the older flags
    and the newer fp32_precision settings have both been written, so the two are not mixed.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    flags = {"torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    try:
        flags.update(torch_matmul_fp32_precision=torch.backends.cuda.matmul.fp32_precision,
                     torch_cudnn_conv_fp32_precision=torch.backends.cudnn.conv.fp32_precision)
    except (AttributeError, RuntimeError):  # torch before 2.9 has only the allow_tf32 flags
        pass
    return flags


def cupy_float32_compute_type():
    """How CuPy's float32 matrix products run: 'tf32', 'default' (full fp32), ... (CuPy-internal API)."""
    try:
        from cupy._core import _routines_linalg as linalg

        code = int(linalg.get_compute_type(np.float32))
        # CuPy's COMPUTE_TYPE_* codes: DEFAULT 1 (full fp32), PEDANTIC 2, FP16 3, FP32 4, FP64 5, BF16 6, TF32 7
        return {1: "default", 2: "pedantic", 3: "fp16", 4: "fp32", 5: "fp64", 6: "bf16", 7: "tf32"}.get(code, str(code))
    except Exception as err:  # the internal module moved: say so rather than fail the run
        return f"unknown ({type(err).__name__})"


def peak_memory_hook(cp):
    """A CuPy memory hook that follows the bytes in use in the memory pool and keeps their maximum."""

    class PeakBytesInUse(cp.cuda.MemoryHook):
        name = "minidet_bench_peak_bytes"

        def __init__(self):
            self.in_use = self.peak = cp.get_default_memory_pool().used_bytes()

        def malloc_postprocess(self, **kw):
            if kw.get("mem_ptr"):
                self.in_use += kw["mem_size"]
                self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kw):
            self.in_use -= kw["mem_size"]

    return PeakBytesInUse()


def timed(fn, sync, repeat, warmup):
    """time_call of fn followed by a device synchronisation (each run starts on a synchronised device)."""
    sync()
    return time_call(lambda: (fn(), sync()), repeat=repeat, warmup=warmup)


def torch_decode_and_clip(torch, rois, bbox_pred, image_size):
    """minidet.boxes.bbox_transform_inv + clip_boxes in torch: rois (R, 4), bbox_pred (R, 4K) -> (R, 4K)."""
    widths = rois[:, 2] - rois[:, 0] + 1
    heights = rois[:, 3] - rois[:, 1] + 1
    ctr_x, ctr_y = rois[:, 0] + 0.5 * widths, rois[:, 1] + 0.5 * heights
    dx, dy, dw, dh = (bbox_pred[:, k::4] for k in range(4))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w, pred_h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    height, width = image_size
    boxes = torch.stack([(pred_ctr_x - 0.5 * pred_w).clamp(0, width - 1),
                         (pred_ctr_y - 0.5 * pred_h).clamp(0, height - 1),
                         (pred_ctr_x + 0.5 * pred_w - 1).clamp(0, width - 1),
                         (pred_ctr_y + 0.5 * pred_h - 1).clamp(0, height - 1)], dim=2)
    return boxes.reshape(len(rois), -1)


def worker(args):
    """Measure one numeric mode (args.worker) and write its JSON to args.worker_out."""
    import cupy as cp

    from benchmarks.bench_model import TorchFastRCNN, random_rois, training_targets
    from minidet.losses import fast_rcnn_loss
    from minidet.models.fast_rcnn import FastRCNN
    from minidet.optim import SGD

    mode, tf32 = args.worker, args.worker == "tf32"
    torch, torchvision = load_torch(args.no_torch)
    settings = {"CUPY_TF32": os.environ.get("CUPY_TF32"), "cupy_float32_compute_type": cupy_float32_compute_type()}
    if torch is not None:
        settings.update(set_torch_tf32(torch, tf32), torch_cudnn_benchmark=args.cudnn_benchmark)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    result = {"mode": mode, "gpu": gpu_description(cp, torch), "settings": settings}

    rng = np.random.default_rng(0)
    print("building VGG16 Fast R-CNN ...", flush=True)
    model = FastRCNN(num_classes=NUM_CLASSES, seed=0)
    (th, tw), (sh, sw) = args.train_size, args.test_size
    train_host = (rng.standard_normal((2, 3, th, tw), dtype=np.float32), random_rois(rng, args.train_rois, 2, th, tw),
                  *training_targets(rng, args.train_rois, NUM_CLASSES))
    test_host = (rng.standard_normal((1, 3, sh, sw), dtype=np.float32), random_rois(rng, args.test_rois, 1, sh, sw))
    torch_net = TorchFastRCNN(model, torch, torchvision) if torch is not None else None
    model.to("gpu")
    device = cp.cuda.Device()
    pool = cp.get_default_memory_pool()

    # -- minidet: the test image first, so that its peak is not measured on the training buffers
    images, rois = (cp.asarray(a) for a in test_host)

    def minidet_test():
        return model.predict(images, rois, (sh, sw))

    print("minidet test image ...", flush=True)
    test = {"minidet": timed(minidet_test, device.synchronize, args.repeat, args.warmup)}
    with peak_memory_hook(cp) as hook:
        scores, boxes = minidet_test()
        device.synchronize()
    test["minidet"].update(peak_bytes_in_use=hook.peak, pool_bytes_held=pool.total_bytes())
    minidet_scores, minidet_boxes = cp.asnumpy(scores), cp.asnumpy(boxes)

    batch = [cp.asarray(a) for a in train_host]
    sgd = SGD(model.trainable_params(), lr=0.001, momentum=0.9, weight_decay=0.0005)

    def minidet_train():
        cls_score, bbox_pred = model.train().forward(batch[0], batch[1])
        loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, *batch[2:])
        value = float(loss)
        model.backward(dcls, dbbox)
        sgd.step(model.grads())
        return value

    print("minidet training iteration ...", flush=True)
    train = {"minidet": timed(minidet_train, device.synchronize, args.repeat, args.warmup)}
    with peak_memory_hook(cp) as hook:
        minidet_train()
        device.synchronize()
    train["minidet"].update(peak_bytes_in_use=hook.peak, pool_bytes_held=pool.total_bytes())
    del model, sgd, batch, images, rois, scores, boxes
    gc.collect()
    pool.free_all_blocks()

    if torch_net is not None:
        cuda = torch.device("cuda")
        torch_net.params = {name: t.detach().to(cuda).requires_grad_(t.requires_grad)
                            for name, t in torch_net.params.items()}
        t_images, t_rois = (torch.from_numpy(a).to(cuda) for a in test_host)

        def torch_test():
            cls_score, bbox_pred = torch_net.test_forward(t_images, t_rois)
            with torch.no_grad():
                boxes = torch_decode_and_clip(torch, t_rois[:, 1:5], bbox_pred, (sh, sw))
                return torch.softmax(cls_score, dim=1), boxes

        print("torch test image ...", flush=True)
        test["torch"] = timed(torch_test, torch.cuda.synchronize, args.repeat, args.warmup)
        torch.cuda.reset_peak_memory_stats()
        torch_scores, torch_boxes = torch_test()
        torch.cuda.synchronize()
        test["torch"].update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                             max_memory_reserved=torch.cuda.max_memory_reserved())
        # the same network on both sides: a check that the comparison is fair
        result["max_abs_score_difference"] = float(np.abs(torch_scores.cpu().numpy() - minidet_scores).max())
        result["max_abs_box_difference"] = float(np.abs(torch_boxes.cpu().numpy() - minidet_boxes).max())

        t_batch = [torch.from_numpy(a).to(cuda) for a in train_host]
        trained = [(name, t) for name, t in torch_net.params.items() if t.requires_grad]
        optimizer = torch.optim.SGD(
            [{"params": [t for name, t in trained if not name.endswith(".bias")], "lr": 0.001, "weight_decay": 0.0005},
             {"params": [t for name, t in trained if name.endswith(".bias")], "lr": 0.002, "weight_decay": 0.0}],
            lr=0.001, momentum=0.9)

        def torch_train():
            value = torch_net.train_step(*t_batch)      # grads cleared, forward, loss, backward, float(loss)
            optimizer.step()
            return value

        print("torch training iteration ...", flush=True)
        train["torch"] = timed(torch_train, torch.cuda.synchronize, args.repeat, args.warmup)
        torch.cuda.reset_peak_memory_stats()
        torch_train()
        torch.cuda.synchronize()
        train["torch"].update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                              max_memory_reserved=torch.cuda.max_memory_reserved())
        for entry in (train, test):
            entry["ratio_minidet_over_torch"] = entry["minidet"]["median_s"] / entry["torch"]["median_s"]
            entry["memory_ratio_minidet_over_torch"] = (entry["minidet"]["peak_bytes_in_use"]
                                                        / entry["torch"]["max_memory_allocated"])

    result["train_iteration"], result["test_image"] = train, test
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(args.worker_out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
