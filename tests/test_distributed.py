"""Data-parallel training: the all-reduce gives the gradient of the concatenated batch (weighted by each
rank's RoIs), two MPI ranks train exactly as one process with their two images, the NCCL communicator's
bookkeeping on a host stand-in of NCCL, a failing rank ends the whole job, and the helpers around them.

The multi-process tests start `mpiexec -n 2 python tests/test_distributed.py MODE ...` (this file, run
as a script, is the worker) and skip when mpi4py or mpiexec is missing (pip install mpi4py mpich).
"""
import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minidet.convention import CAFFE
from minidet.data.dataset import DatasetSubset
from minidet.data.loader import BatchLoader
from minidet.distributed import Communicator, SingleProcess, choose_backend, merge_shards, scale_schedule
from minidet.distributed.communicators import NCCLCommunicator
from minidet.distributed.flat import FlatBuffer, gradient_buffer, pack_step, unpack_step
from minidet.losses import fast_rcnn_loss
from minidet.models.fast_rcnn import FastRCNN
from minidet.optim import SGD

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = dict(width=0.0625, fc_dim=32)          # as tests/test_train.py: channels 4, 8, 16, 32, 32
LOADER = dict(rois_per_image=64, scales=(64,), max_size=200, seed=5)


# ---- data, model and a training loop made of minidet's pieces ------------------------------------

def tiny_data(root):
    """Four 64x80 synthetic images and proposals near their objects (tests/conftest.py make_tiny_voc)."""
    from tests.conftest import make_tiny_voc

    return make_tiny_voc(root, num_trainval=4, random_boxes=30, rounded=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data") / "synthetic")


def tiny_model(dataset, seed=1):
    return FastRCNN.small(dataset.num_classes, dtype=np.float64, dropout=0.0, seed=seed, **TINY_MODEL)


def forward_backward(model, images, rois, labels, targets, weights):
    """(grads {name: copy}, loss, parts) of one forward and backward in float64."""
    cls_score, bbox_pred = model.train().forward(images.astype(np.float64), rois.astype(np.float64))
    loss, dcls, dbbox, parts = fast_rcnn_loss(cls_score, bbox_pred, labels, targets, weights, details=True)
    model.backward(dcls, dbbox)
    return {k: v.copy() for k, v in model.grads().items()}, loss, parts


def train_steps(comm, dataset, proposals, images_per_batch, iters=3, model_seed=1):
    """The data-parallel loop of minidet.train: every rank its share of each global batch, train_step
    (one all-reduce, the ordinary SGD). Returns (state_dict, [global loss of each iteration])."""
    from minidet.train import train_step

    model = tiny_model(dataset, model_seed).train()
    comm.bcast_params(model)                     # every rank starts from rank 0's parameters
    optimizer = SGD(model.trainable_params(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    losses = []
    with BatchLoader(dataset, proposals, CAFFE, dataset.num_classes, images_per_batch=images_per_batch,
                     rank=comm.rank, world_size=comm.size, **LOADER) as loader:
        for _ in range(iters):
            batch = next(loader)
            batch = dict(batch, images=batch["images"].astype(np.float64), rois=batch["rois"].astype(np.float64))
            losses.append(train_step(model, optimizer, batch, comm)["loss"])
    return model.state_dict(), losses


# ---- W ranks as threads of this process ------------------------------------------------------------

class ThreadRanks(Communicator):
    """Rank `rank` of W threads that exchange values through a shared list; the sums in rank order."""

    backend = "threads"

    def __init__(self, rank, group):
        super().__init__(rank, group["size"])
        self.group = group

    def _exchange(self, value):
        group = self.group
        group["slots"][self.rank] = value
        group["barrier"].wait()
        values = list(group["slots"])
        group["barrier"].wait()
        return values

    def _sum_in_place(self, buffer):
        buffer[...] = np.sum(np.stack(self._exchange(buffer.copy())), axis=0)

    def _bcast_in_place(self, buffer):
        buffer[...] = self._exchange(buffer.copy())[0]

    def allgather(self, obj):
        return self._exchange(obj)

    def gather(self, obj, root=0):
        values = self._exchange(obj)
        return values if self.rank == root else None

    def bcast_obj(self, obj, root=0):
        return self._exchange(obj)[root]

    def barrier(self):
        self.group["barrier"].wait()


def run_ranks(size, work):
    """[work(comm) for each of `size` ThreadRanks], run concurrently; a rank's exception is its result."""
    group = {"size": size, "barrier": threading.Barrier(size, timeout=20), "slots": [None] * size}
    results = [None] * size

    def run(rank):
        try:
            results[rank] = work(ThreadRanks(rank, group))
        except Exception as err:  # noqa: BLE001 - handed to the test
            results[rank] = err

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---- in one process -----------------------------------------------------------------------------

def test_allreduce_gives_the_gradient_of_the_concatenated_batch(tiny):
    dataset, proposals = tiny
    model = tiny_model(dataset)
    with BatchLoader(dataset, proposals, CAFFE, dataset.num_classes, images_per_batch=2, **LOADER) as loader:
        batch = next(loader)
    whole = forward_backward(model, batch["images"], batch["rois"], batch["labels"], batch["bbox_targets"],
                             batch["bbox_weights"])
    ranks = []                                    # image n is rank n's, as its own batch of one
    for n in range(2):
        mine = batch["rois"][:, 0] == n
        rois = batch["rois"][mine].copy()
        rois[:, 0] = 0
        grads, loss, parts = forward_backward(model, batch["images"][n:n + 1], rois, batch["labels"][mine],
                                              batch["bbox_targets"][mine], batch["bbox_weights"][mine])
        ranks.append((grads, loss, parts, int(mine.sum())))
    assert ranks[0][3] != ranks[1][3], "equal RoI counts would not tell a weighted mean from a plain one"
    results = run_ranks(2, lambda comm: comm.allreduce_gradients(*ranks[comm.rank][:3], rois=ranks[comm.rank][3]))
    grads_whole, loss_whole, parts_whole = whole
    for grads, stats in results:
        assert set(grads) == set(grads_whole)
        for name, g in grads.items():
            np.testing.assert_allclose(g, grads_whole[name], rtol=1e-12, atol=1e-15, err_msg=name)
        assert stats["rois"] == len(batch["labels"]) == ranks[0][3] + ranks[1][3]
        for key, value in [("loss", loss_whole)] + [(k, parts_whole[k]) for k in ("loss_cls", "loss_bbox", "accuracy")]:
            assert stats[key] == pytest.approx(float(value), rel=1e-12), key
    for name in results[0][0]:                    # identical on both ranks, to the bit
        np.testing.assert_array_equal(results[0][0][name], results[1][0][name])
    plain_mean = {k: (ranks[0][0][k] + ranks[1][0][k]) / 2 for k in grads_whole}
    assert not all(np.allclose(plain_mean[k], grads_whole[k], rtol=1e-6) for k in grads_whole)


def test_single_process_passes_the_gradients_through(tiny):
    dataset, proposals = tiny
    model = tiny_model(dataset)
    with BatchLoader(dataset, proposals, CAFFE, dataset.num_classes, **LOADER) as loader:
        batch = next(loader)
    grads, loss, parts = forward_backward(model, batch["images"], batch["rois"], batch["labels"],
                                          batch["bbox_targets"], batch["bbox_weights"])
    out, stats = SingleProcess().allreduce_gradients(grads, loss, parts, rois=len(batch["labels"]))
    assert out is grads
    assert stats == {"rois": len(batch["labels"]), "loss": float(loss), "loss_cls": float(parts["loss_cls"]),
                     "loss_bbox": float(parts["loss_bbox"]), "accuracy": float(parts["accuracy"])}


def test_flat_buffer_lays_arrays_end_to_end():
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([7.0]), "c": np.arange(4.0).reshape(2, 1, 2)}
    flat = FlatBuffer(arrays, extras=2)
    assert flat.buffer.shape == (13,) and flat.fits(arrays)
    flat.pack(arrays, scale=2.0)
    np.testing.assert_array_equal(flat.buffer[:11], 2 * np.array([0, 1, 2, 3, 4, 5, 7, 0, 1, 2, 3.0]))
    views = flat.views()
    assert views["c"].shape == (2, 1, 2) and np.shares_memory(views["c"], flat.buffer)
    targets = {k: np.zeros_like(v) for k, v in arrays.items()}
    flat.unpack_into(targets)
    for k in arrays:
        np.testing.assert_array_equal(targets[k], 2 * arrays[k])
    assert not flat.fits({"a": arrays["a"], "b": arrays["b"]})
    assert not flat.fits(dict(arrays, b=np.array([1.0], np.float32)))
    with pytest.raises(TypeError, match="one dtype"):
        FlatBuffer({"a": np.zeros(2), "b": np.zeros(2, np.float32)})


def test_step_statistics_are_weighted_by_rois_and_a_rank_without_rois_adds_nothing():
    # rank 0: 3 RoIs, loss 2, accuracy 1/3; rank 1: 1 RoI, loss 6, accuracy 1; rank 2: none
    grads = [{"w": np.array([1.0, 2.0])}, {"w": np.array([5.0, -2.0])}, {"w": np.array([np.nan, np.nan])}]
    steps = [(2.0, dict(loss_cls=1.5, loss_bbox=0.5, accuracy=1 / 3), 3), (6.0, dict(loss_cls=6.0, loss_bbox=0.0,
             accuracy=1.0), 1), (np.nan, dict(loss_cls=np.nan, loss_bbox=np.nan, accuracy=np.nan), 0)]
    total = None
    for g, (loss, parts, rois) in zip(grads, steps):
        flat = gradient_buffer(g)
        pack_step(flat, g, rois, loss, parts)
        total = flat.buffer.copy() if total is None else total + flat.buffer
    flat.buffer[...] = total
    out, stats = unpack_step(flat)
    np.testing.assert_allclose(out["w"], [(3 * 1 + 5) / 4, (3 * 2 - 2) / 4])
    assert stats == pytest.approx({"rois": 4, "loss": (3 * 2 + 6) / 4, "loss_cls": (4.5 + 6) / 4,
                                   "loss_bbox": 1.5 / 4, "accuracy": 2 / 4})
    flat.buffer[...] = 0
    with pytest.raises(ValueError, match="no rank had a RoI"):
        unpack_step(flat)


def test_parameters_broadcast_and_configurations_compared_between_ranks(tiny):
    dataset, _ = tiny

    def work(comm):
        model = tiny_model(dataset, seed=10 + comm.rank)
        comm.bcast_params(model)
        digest = comm.check_same({"lr": 0.01, "scales": [600]})
        try:
            comm.check_same({"lr": 0.01 * (1 + (comm.rank == 2))}, "configuration")
        except ValueError as err:
            return model.state_dict(), digest, str(err)

    results = run_ranks(3, work)
    reference = tiny_model(dataset, seed=10).state_dict()
    for state, digest, message in results:
        for name in reference:
            np.testing.assert_array_equal(state[name], reference[name], err_msg=name)
        assert digest == results[0][1]
        assert "configuration differs between ranks: rank(s) [2]" in message


def test_shards_and_their_merge_are_inverse(tiny):
    dataset, _ = tiny
    parts = [[f"item{i}" for i in range(rank, 7, 3)] for rank in range(3)]
    assert parts[1] == ["item1", "item4"]
    assert merge_shards(parts, 7) == [f"item{i}" for i in range(7)]
    with pytest.raises(ValueError, match="rank 2 sent 1 values for its 2 items"):
        merge_shards([["a", "b"], ["c", "d"], ["e"]], 6)
    gathered = run_ranks(3, lambda comm: comm.gather_to_root([i * i for i in comm.shard(range(8))], 8))
    assert gathered == [[i * i for i in range(8)], None, None]
    shard = DatasetSubset(dataset, [3, 1])
    assert len(shard) == 2 and shard.ids == [dataset.ids[3], dataset.ids[1]]
    assert shard.image_path(0) == dataset.image_path(3) and shard.annotation(1)["id"] == dataset.ids[1]
    np.testing.assert_array_equal(shard.load_image(1), dataset.load_image(1))


def test_backend_choice():
    assert choose_backend(False, "gpu") == "single"
    assert choose_backend(True, "cpu") == "mpi" and choose_backend(True, "gpu") == "nccl"
    assert choose_backend(True, "gpu", "mpi") == "mpi"
    with pytest.raises(ValueError, match="NCCL all-reduces GPU arrays"):
        choose_backend(True, "cpu", "nccl")
    with pytest.raises(ValueError, match="--distributed"):
        choose_backend(False, "cpu", "mpi")
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(True, "cpu", "gloo")


def test_a_single_process_run_never_imports_mpi4py():
    code = ("import sys, minidet.distributed as d; comm = d.make_communicator(); "
            "assert comm.size == 1 and comm.is_root and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=worker_env(), check=True, timeout=60)


def test_a_distributed_run_without_mpi4py_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None; import minidet.distributed as d\n"
            "try:\n    d.make_communicator(distributed=True)\nexcept RuntimeError as err:\n    print(err)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=worker_env(), capture_output=True,
                            text=True, timeout=60)
    assert "distributed training needs mpi4py: pip install 'minidet[dist]'" in result.stdout, result.stderr


def test_rank_zero_keeps_the_one_process_dropout_stream_and_the_others_get_their_own():
    from minidet.seeds import segment_seed

    seeds = {rank: [segment_seed(7, 500, 1 + k, rank) for k in range(2)] for rank in range(4)}
    expected = [int(np.random.SeedSequence([7, 500, 1 + k]).generate_state(1)[0]) for k in range(2)]
    assert seeds[0] == expected
    assert len({s for v in seeds.values() for s in v}) == 8


def test_linear_scaling_of_the_schedule():
    # the paper's VGG16 schedule on 8 ranks: 8x the rate, 1/8 of the iterations, Goyal's warmup from 1/8
    assert scale_schedule(0.001, 40000, 30000, 0, 0.1, 8) == pytest.approx(
        dict(lr=0.008, iters=5000, step_size=3750, warmup_iters=250, warmup_factor=0.125))
    # a schedule with its own warmup keeps it, W times shorter, from the same starting rate (0.01 x 0.1)
    assert scale_schedule(0.01, 3000, 0, 200, 0.1, 4) == pytest.approx(
        dict(lr=0.04, iters=750, step_size=0, warmup_iters=50, warmup_factor=0.025))
    assert scale_schedule(0.001, 10, 7, 0, 0.1, 1) == dict(lr=0.001, iters=10, step_size=7, warmup_iters=0,
                                                          warmup_factor=0.1)


STANDIN_CHECK = r"""
import numpy as np, cupy
from minidet.distributed.flat import gradient_buffer, pack_step, unpack_step
grads = {"w": np.arange(6.0).reshape(2, 3), "b": np.array([0.5, -1.0])}
parts = dict(loss_cls=np.float64(1.0), loss_bbox=np.float64(0.25), accuracy=np.float64(0.5))
results = []
for xp in (np, cupy):
    g = {k: xp.asarray(v) for k, v in grads.items()}
    flat = gradient_buffer(g)
    pack_step(flat, g, 4, xp.asarray(1.25), {k: xp.asarray(v) for k, v in parts.items()})
    flat.buffer *= 2                                  # two identical ranks
    out, stats = unpack_step(flat)
    assert all(type(v) is type(flat.buffer) for v in out.values()) and type(flat.buffer).__module__.startswith(xp.__name__)
    results.append(({k: cupy.asnumpy(v) for k, v in out.items()}, stats))
for k in grads:
    np.testing.assert_array_equal(results[1][0][k], results[0][0][k])
    np.testing.assert_array_equal(results[1][0][k], grads[k])
assert results[0][1] == results[1][1] == dict(rois=8, loss=1.25, loss_cls=1.0, loss_bbox=0.25, accuracy=0.5), results
print("ok")
"""


def test_the_flat_buffer_stays_on_the_device_with_the_cupy_standin():
    env = worker_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "cupy_standin"), env["PYTHONPATH"]])
    result = subprocess.run([sys.executable, "-c", STANDIN_CHECK], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# ---- two MPI ranks ------------------------------------------------------------------------------------

def worker_env():
    """The environment of a subprocess: this checkout's minidet first, one BLAS thread per rank."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts it there), else on PATH; skip without mpi4py."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install mpi4py mpich)")
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


def run_job(ranks, *args, timeout=60):
    command = [mpiexec(), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), *map(str, args)]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the job still ran after {timeout} s (a rank waiting for ever?):\n{err.stdout}\n{err.stderr}")
    return result, time.perf_counter() - started


def test_two_ranks_of_one_image_train_exactly_as_one_process_of_two(tiny, tmp_path):
    dataset, proposals = tiny
    result, _ = run_job(2, "train", dataset.root, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    state, losses = train_steps(SingleProcess(), dataset, proposals, images_per_batch=2)
    for backend in ("mpi", "nccl"):
        ranks = [np.load(tmp_path / f"{backend}-rank{r}.npz") for r in range(2)]
        for name, value in state.items():
            np.testing.assert_allclose(ranks[0][name], value, rtol=1e-10, atol=1e-14, err_msg=f"{backend} {name}")
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=f"{backend} {name}")
        np.testing.assert_allclose(ranks[0]["losses"], losses, rtol=1e-10)
        np.testing.assert_array_equal(ranks[0]["losses"], ranks[1]["losses"])
    start = tiny_model(dataset).state_dict()
    assert not np.allclose(state["fc6.weight"], start["fc6.weight"])       # the three steps moved it
    facts = [json.loads((tmp_path / f"facts-rank{r}.json").read_text()) for r in range(2)]
    for rank, f in enumerate(facts):
        assert f["local_rank"] == rank and f["device"] == rank       # one node, two (stand-in) GPUs
        assert f["nccl_ranks"] == [2, rank] and f["unique_id_from_rank0"]
        assert "configuration differs between ranks: rank(s) [1]" in f["check_same"]


@pytest.mark.parametrize("how", ["raise", "abort"])
def test_a_failing_rank_ends_the_whole_job_within_seconds(tmp_path, how):
    result, seconds = run_job(2, "fail", how, timeout=20)
    assert result.returncode != 0
    assert seconds < 10, seconds
    assert "rank 1 cannot read its images" in result.stderr
    if how == "raise":
        assert "uncaught ValueError on rank 1 of 2: aborting every rank" in result.stderr


# ---- the worker: this file run by mpiexec -----------------------------------------------------------

class HostNCCL:
    """cupy.cuda.nccl's interface on host memory, summing and broadcasting through MPI: it checks what
    NCCLCommunicator hands NCCL (pointers, counts, types, the reduction, the root, the unique id)."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0       # nccl.h's values
    DTYPES = {6: np.float16, 7: np.float32, 8: np.float64}

    def __init__(self, mpi_comm):
        self.mpi, self.made = mpi_comm, []

    def get_unique_id(self):
        return tuple(int(b) for b in os.urandom(128))

    def NcclCommunicator(self, ndev, unique_id, rank):  # noqa: N802 - cupy's name
        self.made.append((ndev, rank, self.mpi.bcast(unique_id, root=0) == unique_id))
        return self

    def _view(self, pointer, count, datatype):
        dtype = np.dtype(self.DTYPES[datatype])
        return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(pointer), dtype)

    def allReduce(self, send, receive, count, datatype, op, stream):  # noqa: N802
        from mpi4py import MPI

        assert send == receive and op == self.NCCL_SUM and stream == 0
        self.mpi.Allreduce(MPI.IN_PLACE, self._view(send, count, datatype), op=MPI.SUM)

    def bcast(self, pointer, count, datatype, root, stream):
        assert root == 0 and stream == 0
        self.mpi.Bcast(self._view(pointer, count, datatype), root=root)

    def abort(self):
        pass


class TwoGPUs:
    """The few cupy calls NCCLCommunicator makes, on a pretend machine with two GPUs."""

    def __init__(self):
        self.used = []
        gpus = self

        class Device:
            def __init__(self, index):
                self.index = index

            def use(self):
                gpus.used.append(self.index)

        class Stream:
            ptr = 0

        self.cuda = type("cuda", (), {"Device": Device, "get_current_stream": staticmethod(lambda: Stream()),
                                      "runtime": type("runtime", (), {"getDeviceCount": staticmethod(lambda: 2)})})


class NCCLOnHost(NCCLCommunicator):
    """NCCLCommunicator with numpy arrays in the place of GPU arrays."""

    _on_device = staticmethod(lambda buffer: True)
    _pointer = staticmethod(lambda buffer: buffer.ctypes.data)


def worker(argv):
    from minidet.distributed import MPICommunicator

    mode = argv[0]
    if mode == "train":
        from mpi4py import MPI

        dataset, proposals = tiny_data(argv[1])  # the set already written: the test's images and proposals
        out = Path(argv[2])
        mpi = MPICommunicator()
        nccl, gpus = HostNCCL(MPI.COMM_WORLD), TwoGPUs()
        for comm in (mpi, NCCLOnHost(cupy=gpus, nccl=nccl)):
            state, losses = train_steps(comm, dataset, proposals, images_per_batch=1, model_seed=1 + comm.rank)
            np.savez(out / f"{comm.backend}-rank{comm.rank}.npz", losses=np.array(losses), **state)
        try:
            mpi.check_same({"scales": [600 + mpi.rank]})
            message = "no error"
        except ValueError as err:
            message = str(err)
        facts = dict(local_rank=mpi.local_rank, device=gpus.used[-1], nccl_ranks=list(nccl.made[0][:2]),
                     unique_id_from_rank0=nccl.made[0][2], check_same=message)
        (out / f"facts-rank{mpi.rank}.json").write_text(json.dumps(facts))
    elif mode == "fail":
        comm = MPICommunicator()
        if comm.rank == 1:
            if argv[1] == "abort":
                comm.abort("rank 1 cannot read its images", code=3)
            raise ValueError("rank 1 cannot read its images")
        comm.barrier()                           # without the abort, rank 0 would wait here for ever
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    worker(sys.argv[1:])
