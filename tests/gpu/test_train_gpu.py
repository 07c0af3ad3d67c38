"""Training on the GPU: the CPU's losses from the same weights, and nothing leaves the device.

Dropout draws its masks from a numpy generator on the CPU and a cupy one on the GPU, so the
two devices drop different units. The comparisons therefore run with dropout off (p = 0) or
with masks drawn on the host from a fixed seed and copied to whichever device the layer runs on.
"""
import os
import traceback

import numpy as np
import pytest

from minidet.backend import asnumpy, get_array_module, is_gpu_array
from minidet.losses import fast_rcnn_loss
from minidet.nn.dropout import Dropout
from minidet.optim import SGD

pytestmark = pytest.mark.gpu

NUM_CLASSES = 4
IMAGE_SIZE = (80, 112)          # conv5_3: 5 x 7 cells


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def tf32_enabled():
    return os.environ.get("CUPY_TF32", "0") not in ("", "0")


def float32_rtol():
    """Losses: 1e-3 over a few iterations (2e-2 when CUPY_TF32 lets cuBLAS round float32 inputs to 10 bits)."""
    return 2e-2 if tf32_enabled() else 1e-3


def float32_state_rtol():
    """Gradients and weights, relative to their largest magnitude: 1e-2 (5e-2 with TF32).

    In float32 the devices' different summation orders can move a ReLU input or a pooling
    maximum that is within rounding of its threshold to the other side, which routes one unit's
    gradient differently. Between float32 and float64 runs of this test's networks (24 seeds)
    that moved the weights after 3 steps by up to 4e-4 of their magnitude; a wrong kernel is off
    by the magnitude itself. Float64 runs (1e-8) have no such flips.
    """
    return 5e-2 if tf32_enabled() else 1e-2


def random_batch(rng, num_images=2, num_rois=48, size=IMAGE_SIZE, num_classes=NUM_CLASSES):
    """images (N, 3, H, W) float32, rois (R, 5) float32, labels (R,) int64, targets and weights (R, 4K) float32."""
    height, width = size
    images = rng.standard_normal((num_images, 3, height, width)).astype(np.float32)
    x1, y1 = rng.uniform(0, width - 8, num_rois), rng.uniform(0, height - 8, num_rois)
    x2 = np.minimum(x1 + rng.uniform(8, width, num_rois), width - 1)
    y2 = np.minimum(y1 + rng.uniform(8, height, num_rois), height - 1)
    batch = np.sort(rng.integers(0, num_images, num_rois))
    rois = np.stack([batch, x1, y1, x2, y2], axis=1).astype(np.float32)
    labels = rng.integers(0, num_classes, num_rois)
    labels[: num_rois // 2] = 0
    bbox_targets = rng.standard_normal((num_rois, 4 * num_classes)).astype(np.float32)
    bbox_weights = np.zeros((num_rois, 4 * num_classes), np.float32)
    bbox_weights[np.arange(num_rois)[:, None], 4 * labels[:, None] + np.arange(4)] = labels[:, None] > 0
    return images, rois, labels, bbox_targets, bbox_weights


def small_model(dtype=np.float32, dropout=0.0, trainable_from="conv1_1"):
    """FastRCNN.small, narrower still (channels 4 .. 32, fc 32): the same weights for the same seed."""
    from minidet.models.fast_rcnn import FastRCNN

    return FastRCNN.small(NUM_CLASSES, width=1 / 16, fc_dim=32, trainable_from=trainable_from,
                          dtype=dtype, seed=0, dropout=dropout)


class HostMaskDropout(Dropout):
    """Dropout whose k-th mask is drawn on the host from (seed, k) and copied to the input's device:
    the same masks on the CPU and on the GPU, so that a GPU run can reproduce a CPU run with p > 0."""

    def __init__(self, p, seed):
        super().__init__(p, seed)
        self.draws = 0

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        keep = np.random.default_rng([self.seed, self.draws]).random(x.shape) >= self.p
        self.draws += 1
        self.mask = get_array_module(x).asarray(keep.astype(x.dtype) / x.dtype.type(1 - self.p))
        return x * self.mask


def train_iterations(model, batch, iterations, lr=0.002):
    """Run `iterations` SGD steps on one batch; (losses, gradients of the first step as numpy)."""
    images, rois, labels, bbox_targets, bbox_weights = batch
    sgd = SGD(model.trainable_params(), lr=lr, momentum=0.9, weight_decay=0.0005)
    losses, first_grads = [], None
    for _ in range(iterations):
        cls_score, bbox_pred = model.train().forward(images, rois)
        loss, dcls, dbbox = fast_rcnn_loss(cls_score, bbox_pred, labels, bbox_targets, bbox_weights)
        losses.append(float(loss))
        model.backward(dcls, dbbox)
        grads = model.grads()
        if first_grads is None:
            first_grads = {name: asnumpy(g).copy() for name, g in grads.items()}
        sgd.step(grads)
    return losses, first_grads


def assert_close_to_magnitude(actual, expected, rtol, what):
    scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dropout,trainable_from", [
    (0.0, "conv1_1"),     # every layer trained, dropout off
    (0.5, "conv3_1"),     # the paper's frozen conv1/conv2, dropout masks drawn on the host
])
def test_gpu_training_gives_the_cpu_losses_gradients_and_weights(cp, dtype, dropout, trainable_from):
    loss_rtol, state_rtol = (float32_rtol(), float32_state_rtol()) if dtype == np.float32 else (1e-8, 1e-8)
    batch = random_batch(np.random.default_rng(0))
    batch = tuple(a.astype(dtype) if a.dtype == np.float32 else a for a in batch)
    cpu, gpu = small_model(dtype, dropout, trainable_from), small_model(dtype, dropout, trainable_from)
    if dropout:
        for k, name in enumerate(("drop6", "drop7")):
            cpu.replace_layer(name, HostMaskDropout(dropout, seed=k))
            gpu.replace_layer(name, HostMaskDropout(dropout, seed=k))
    gpu.to("gpu")

    cpu_losses, cpu_grads = train_iterations(cpu, batch, 3)
    gpu_losses, gpu_grads = train_iterations(gpu, tuple(cp.asarray(a) for a in batch), 3)

    assert len(set(cpu_losses)) == 3, "the weights must move between iterations for the test to mean anything"
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=loss_rtol)
    assert sorted(gpu_grads) == sorted(cpu_grads)
    if trainable_from == "conv3_1":
        assert "conv2_2.weight" not in gpu_grads and "conv3_1.weight" in gpu_grads
    for name in cpu_grads:
        assert gpu_grads[name].dtype == dtype
        assert_close_to_magnitude(gpu_grads[name], cpu_grads[name], state_rtol, name)
    gpu_state, cpu_state = gpu.state_dict(), cpu.state_dict()
    for name in cpu_state:
        assert gpu_state[name].dtype == dtype
        assert_close_to_magnitude(gpu_state[name], cpu_state[name], state_rtol, name)


def test_gpu_training_keeps_weights_gradients_and_velocities_on_the_device(cp):
    model = small_model(np.float32, dropout=0.5).to("gpu")
    images, rois, labels, bbox_targets, bbox_weights = (cp.asarray(a) for a in random_batch(np.random.default_rng(1)))
    sgd = SGD(model.trainable_params(), lr=0.001)
    cls_score, bbox_pred = model.train().forward(images, rois)
    loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, labels, bbox_targets, bbox_weights, details=True)
    model.backward(dcls, dbbox)
    sgd.step(model.grads())
    assert is_gpu_array(cls_score) and is_gpu_array(bbox_pred)
    assert is_gpu_array(loss) and loss.ndim == 0
    assert all(is_gpu_array(v) and v.ndim == 0 for v in parts.values())
    assert all(is_gpu_array(p) for p in model.params().values())
    assert all(is_gpu_array(g) for g in model.grads().values())
    assert all(is_gpu_array(v) for v in sgd.velocity.values())
    assert all(is_gpu_array(layer.mask) for layer in (model.layer("drop6"), model.layer("drop7")))
    assert all(p.dtype == np.float32 for p in model.params().values())
    assert all(g.dtype == np.float32 for g in model.grads().values())
    # the optimiser holds the model's own arrays: the update reaches the model
    params = model.trainable_params()
    assert all(sgd.params[name] is params[name] for name in params)


class HostTransfers:
    """Records every copy between host and device made through CuPy's Python surface while active:
    device -> host (ndarray.get, float(), int(), bool(), .item(), .tolist(), cupy.asnumpy) and
    host -> device (cupy.asarray / array / ascontiguousarray of a numpy array or a list, and
    ndarray.set, "pinned" when its source is pinned memory and a stream is given).
    Each event is (kind, "file:line" of the innermost minidet frame that asked for it)."""

    DEVICE_TO_HOST = ("get", "item", "tolist", "__float__", "__int__", "__index__", "__bool__", "__complex__")
    HOST_TO_DEVICE = ("asarray", "array", "ascontiguousarray")

    def __init__(self, cp, monkeypatch):
        self.events = []
        for name in self.DEVICE_TO_HOST:
            original = getattr(cp.ndarray, name, None)
            if original is None:
                continue
            monkeypatch.setattr(cp.ndarray, name, self._wrap(original, "device->host " + name, lambda *a, **k: True))
        monkeypatch.setattr(cp, "asnumpy", self._wrap(cp.asnumpy, "device->host asnumpy",
                                                      lambda a, *_, **__: is_gpu_array(a)))
        for name in self.HOST_TO_DEVICE:
            monkeypatch.setattr(cp, name, self._wrap(getattr(cp, name), "host->device " + name,
                                                     lambda a, *_, **__: isinstance(a, (np.ndarray, list, tuple))))
        original_set = cp.ndarray.set

        def set_(array, source, stream=None):
            pinned = stream is not None and is_pinned(cp, source)
            self.events.append(("host->device set " + ("pinned" if pinned else "pageable"), self._caller()))
            return original_set(array, source, stream=stream)

        monkeypatch.setattr(cp.ndarray, "set", set_)

    def _wrap(self, original, kind, counts):
        def wrapper(*args, **kwargs):
            if counts(*args, **kwargs):
                self.events.append((kind, self._caller()))
            return original(*args, **kwargs)
        return wrapper

    @staticmethod
    def _caller():
        for frame in reversed(traceback.extract_stack()[:-2]):
            if os.sep + "minidet" + os.sep in frame.filename and os.sep + "tests" + os.sep not in frame.filename:
                return f"{os.path.relpath(frame.filename)}:{frame.lineno}"
        return "outside minidet"


def is_pinned(cp, array):
    """Whether a numpy array views memory from cupy.cuda.alloc_pinned_memory."""
    base = array
    while base is not None:
        if isinstance(base, cp.cuda.PinnedMemoryPointer):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return False


def test_a_training_loop_on_staged_batches_reads_the_device_once_per_iteration(cp, monkeypatch):
    # The loop of minidet.train: batches staged through pinned memory, train_step, whose loss and
    # parts are read from the device once, before the update.
    from minidet.device_batch import BATCH_KEYS, DeviceBatches
    from minidet.distributed import SingleProcess
    from minidet.train import train_step

    batches = [dict(zip(BATCH_KEYS, random_batch(np.random.default_rng(10 + k)))) for k in range(4)]

    def run(device):
        model = small_model(np.float32, dropout=0.0, trainable_from="conv3_1")
        if device == "gpu":
            model.to("gpu")
        sgd = SGD(model.trainable_params(), lr=0.002, momentum=0.9)
        stage = DeviceBatches(device)

        def iteration(batch):
            stats = train_step(model.train(), sgd, stage(batch), SingleProcess())
            return {k: stats[k] for k in ("loss", "loss_cls", "loss_bbox", "accuracy")}

        logged = [iteration(batches[0])]          # compiles the kernels, makes the kept buffers
        transfers = HostTransfers(cp, monkeypatch) if device == "gpu" else None
        logged += [iteration(batch) for batch in batches[1:]]
        monkeypatch.undo()
        return logged, transfers

    logged_cpu, _ = run("cpu")
    logged_gpu, transfers = run("gpu")
    reads = [event for event in transfers.events if event[0].startswith("device->host")]
    writes = [event for event in transfers.events if event[0].startswith("host->device")]
    assert len(reads) == 3 and all("device_batch.py" in where for _, where in reads), transfers.events
    assert [kind for kind, _ in writes] == ["host->device set pinned"] * (3 * len(BATCH_KEYS)), transfers.events
    for cpu_values, gpu_values in zip(logged_cpu, logged_gpu):
        assert sorted(gpu_values) == ["accuracy", "loss", "loss_bbox", "loss_cls"]
        for name in cpu_values:
            np.testing.assert_allclose(gpu_values[name], cpu_values[name], rtol=float32_rtol(), err_msg=name)


def test_a_gpu_training_iteration_makes_no_host_round_trip(cp, monkeypatch):
    # The one copy an iteration needs is the scalar loss, read by the caller after the step.
    model = small_model(np.float32, dropout=0.5, trainable_from="conv3_1").to("gpu")
    images, rois, labels, bbox_targets, bbox_weights = (cp.asarray(a) for a in random_batch(np.random.default_rng(2)))
    sgd = SGD(model.trainable_params(), lr=0.001)

    def iteration():
        cls_score, bbox_pred = model.train().forward(images, rois)
        loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, labels, bbox_targets, bbox_weights,
                                                  details=True)
        model.backward(dcls, dbbox)
        sgd.step(model.grads())
        return loss

    iteration()                        # compiles the kernels and makes the kept buffers
    transfers = HostTransfers(cp, monkeypatch)
    loss = iteration()
    monkeypatch.undo()
    assert transfers.events == [], f"host round trips inside a training iteration: {transfers.events}"
    assert np.isfinite(float(loss))


def test_train_loop_with_device_gpu_logs_the_cpu_losses(cp, tiny_voc, tmp_path):
    from minidet.checkpoint import load_npz
    from minidet.runlog import read_log
    from minidet.train import train
    from minidet.train_config import TrainConfig

    dataset, proposals = tiny_voc
    logs, finals = {}, {}
    for device in ("cpu", "gpu"):
        out = tmp_path / device
        config = TrainConfig(data_dir=dataset.root, out=str(out), preset="small", device=device, iters=3, lr=0.01,
                             step_size=0, scales=(64,), max_size=200, rois_per_image=16, checkpoint_every=0,
                             progress=False, model_kwargs=dict(width=0.0625, fc_dim=32, dropout=0.0))
        train(config, dataset, proposals, log=lambda *args: None)
        logs[device] = read_log(os.path.join(out, "log.jsonl"))
        finals[device], _ = load_npz(os.path.join(out, "final.npz"))
    assert [r["iteration"] for r in logs["gpu"]] == [1, 2, 3]
    for cpu_record, gpu_record in zip(logs["cpu"], logs["gpu"]):
        assert gpu_record["rois"] == cpu_record["rois"]          # the same batches
        for key in ("loss", "loss_cls", "loss_bbox"):
            np.testing.assert_allclose(gpu_record[key], cpu_record[key], rtol=float32_rtol(), err_msg=key)
    for name, value in finals["cpu"].items():
        assert_close_to_magnitude(finals["gpu"][name], value, float32_state_rtol(), name)


def test_staged_batches_arrive_whole_while_their_sizes_change_and_reuse_pinned_buffers(cp, monkeypatch):
    from minidet.device_batch import DeviceBatches

    allocations = []
    original = cp.cuda.alloc_pinned_memory
    monkeypatch.setattr(cp.cuda, "alloc_pinned_memory", lambda size: (allocations.append(size), original(size))[1])
    stage = DeviceBatches("gpu", keys=("images", "labels"))
    rng = np.random.default_rng(4)
    for rois in (48, 48, 48, 48, 64, 30):
        batch = {"images": rng.standard_normal((2, 3, 40, 56)).astype(np.float32),
                 "labels": rng.integers(0, 5, rois)}
        staged = stage(batch)
        for name, value in batch.items():
            assert is_gpu_array(staged[name]) and staged[name].dtype == value.dtype
            np.testing.assert_array_equal(asnumpy(staged[name]), value)
    assert allocations == [53760, 384, 53760, 384, 768]    # two per name, then one grown for 64 labels
