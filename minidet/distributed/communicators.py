"""Communicators: which rank a process is, and the collective operations data-parallel training needs.

    SingleProcess     one process, the default: every collective is the identity; never imports mpi4py
    MPICommunicator   processes started by mpiexec or srun and connected by mpi4py; buffers all-reduced
                      in place (a GPU buffer through a host copy), Python objects pickled
    NCCLCommunicator  MPI to start, connect, pass objects and wait; NCCL (cupy.cuda.nccl) for GPU
                      buffers: one NCCL communicator per rank, on the GPU of its rank within the node,
                      from a unique id that rank 0 makes and broadcasts over MPI (ChainerMN's design)

Every communicator has rank, size, local_rank, is_root, and allreduce_gradients, bcast_params,
bcast_arrays, bcast_obj, barrier, gather, allgather, check_same, shard, gather_to_root and abort.
A subclass supplies the primitives; the rest is written once, in Communicator.
"""
import hashlib
import json
import sys

from minidet.backend import asnumpy, is_gpu_array, require_cupy
from minidet.distributed.flat import STATS, FlatBuffer, gradient_buffer, pack_step, unpack_step


def merge_shards(parts, total):
    """The inverse of Communicator.shard: parts[r] holds the values of items r, r + W, r + 2W, ...
    (W = len(parts)); returns the list of all `total` values in item order."""
    merged = [None] * total
    for rank, values in enumerate(parts):
        places = range(rank, total, len(parts))
        if len(values) != len(places):
            raise ValueError(f"rank {rank} sent {len(values)} values for its {len(places)} items of {total}")
        for place, value in zip(places, values):
            merged[place] = value
    return merged


class Communicator:
    """The collective operations, written once on top of the primitives a subclass defines:
    _sum_in_place(buffer), _bcast_in_place(buffer), gather, allgather, bcast_obj, barrier, abort."""

    backend = None

    def __init__(self, rank, size, local_rank=0):
        self.rank, self.size, self.local_rank = int(rank), int(size), int(local_rank)
        self._gradients = None           # the FlatBuffer of the gradients, kept from step to step

    @property
    def is_root(self):
        """Rank 0 writes the logs, the checkpoints and the final model; the others only train."""
        return self.rank == 0

    def allreduce_gradients(self, grads, loss, parts, rois):
        """The gradient and the statistics of the global batch, the same on every rank (minidet.distributed.flat).

        grads {name: array}: this rank's model.grads() after backward; loss, parts: its
        fast_rcnn_loss(..., details=True) values; rois: its R_k. One all-reduce.
        Returns (grads {name: array} for optimizer.step, stats {rois, loss, loss_cls, loss_bbox,
        accuracy}): the gradient of the mean loss over every rank's RoIs, and that mean.
        """
        if self._gradients is None or not self._gradients.fits(grads):
            self._gradients = gradient_buffer(grads)
        pack_step(self._gradients, grads, rois, loss, parts)
        self._sum_in_place(self._gradients.buffer)
        return unpack_step(self._gradients)

    def bcast_arrays(self, arrays):
        """Overwrite arrays {name: array} (one dtype) with rank 0's, in place; returns arrays."""
        if self.size > 1 and arrays:
            flat = FlatBuffer(arrays)
            if self.is_root:
                flat.pack(arrays)
            self._bcast_in_place(flat.buffer)
            if not self.is_root:
                flat.unpack_into(arrays)
        return arrays

    def bcast_params(self, model):
        """Every parameter of the model (frozen ones too) from rank 0, after loading weights or resuming."""
        self.bcast_arrays(model.params())

    def check_same(self, value, what="configuration"):
        """A ValueError on every rank unless `value` (anything JSON can write) is the same on all of them.

        Returns the value's SHA-256 digest."""
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()
        digests = self.allgather(digest)
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ValueError(f"the {what} differs between ranks: rank(s) {differ} against rank 0 "
                             f"(digests {', '.join(d[:12] for d in digests)}); start every rank with the same arguments")
        return digest

    def shard(self, indices):
        """This rank's share of a list of items: item i on rank i mod W (indices[rank::size])."""
        return list(indices)[self.rank::self.size]

    def gather_to_root(self, values, total):
        """The values every rank computed for its shard(range(total)), on rank 0 in item order; None elsewhere."""
        parts = self.gather(list(values))
        return merge_shards(parts, total) if self.is_root else None


class SingleProcess(Communicator):
    """One process: rank 0 of 1. The gradients pass through untouched."""

    backend = "single"

    def __init__(self):
        super().__init__(0, 1)

    def allreduce_gradients(self, grads, loss, parts, rois):
        from minidet.device_batch import host_values

        stats = host_values(loss=loss, **{k: parts[k] for k in STATS[2:]})   # one read from the device
        return grads, dict(stats, rois=int(rois))

    def _sum_in_place(self, buffer):
        pass

    def _bcast_in_place(self, buffer):
        pass

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def bcast_obj(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def abort(self, message, code=1):
        """Print the message and exit with `code`."""
        sys.stderr.write(f"{message}\n")
        raise SystemExit(code)


def import_mpi():
    """mpi4py's MPI module (importing it starts MPI), or a RuntimeError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError("distributed training needs mpi4py: pip install 'minidet[dist]' (mpi4py and the "
                           "mpich wheel, which brings mpiexec), or build mpi4py against the cluster's MPI "
                           f"({err})") from err
    return MPI


def install_abort_hook(comm):
    """An uncaught exception on this rank prints its traceback and then aborts every rank (MPI_Abort).

    Without it, the other ranks would wait for ever in their next collective operation; `python
    -m mpi4py script.py` installs the same behaviour."""
    previous = sys.excepthook
    if getattr(previous, "aborts_every_rank", False):
        return

    def abort_every_rank(kind, value, traceback):
        try:
            previous(kind, value, traceback)
            sys.stderr.write(f"minidet: uncaught {kind.__name__} on rank {comm.Get_rank()} of "
                             f"{comm.Get_size()}: aborting every rank\n")
            sys.stderr.flush()
        finally:
            comm.Abort(1)

    abort_every_rank.aborts_every_rank = True
    sys.excepthook = abort_every_rank


class MPICommunicator(Communicator):
    """Ranks connected by MPI (mpi4py); comm: an mpi4py communicator (default COMM_WORLD)."""

    backend = "mpi"

    def __init__(self, comm=None, abort_on_error=True):
        self.MPI = import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.comm.Get_rank())
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), node.Get_rank())
        self.local_size = node.Get_size()
        node.Free()
        if abort_on_error:
            install_abort_hook(self.comm)

    def _through_host(self, buffer, operation):
        """Run an MPI operation on buffer in place; a GPU buffer goes through a host copy."""
        if not is_gpu_array(buffer):
            operation(buffer)
            return
        host = asnumpy(buffer)
        operation(host)
        buffer[...] = require_cupy().asarray(host)

    def _sum_in_place(self, buffer):
        self._through_host(buffer, lambda b: self.comm.Allreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM))

    def _bcast_in_place(self, buffer):
        self._through_host(buffer, lambda b: self.comm.Bcast(b, root=0))

    def gather(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, message, code=1):
        """Print the message (naming this rank) and end every rank of the job with `code`."""
        sys.stderr.write(f"[rank {self.rank} of {self.size}] {message}\n")
        sys.stderr.flush()
        self.comm.Abort(code)


class NCCLCommunicator(MPICommunicator):
    """MPI ranks whose GPU buffers are summed and broadcast by NCCL; host buffers still go through MPI.

    Each rank uses GPU local_rank (mod the GPUs it sees), made current here: create the
    communicator before anything is allocated on the GPU. cupy, nccl: the modules to use
    (default: cupy and cupy.cuda.nccl).
    """

    backend = "nccl"

    def __init__(self, comm=None, abort_on_error=True, cupy=None, nccl=None):
        super().__init__(comm, abort_on_error)
        self.cupy = cupy if cupy is not None else require_cupy()
        if nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError as err:
                raise RuntimeError(f"this CuPy has no NCCL ({err}): install NCCL for it (pip install "
                                   "nvidia-nccl-cu12), or all-reduce through MPI (backend 'mpi')") from err
        self.nccl = nccl
        self.device = self.local_rank % self.cupy.cuda.runtime.getDeviceCount()
        self.cupy.cuda.Device(self.device).use()
        unique_id = self.comm.bcast(nccl.get_unique_id() if self.is_root else None, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self.types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    @staticmethod
    def _on_device(buffer):
        return is_gpu_array(buffer)

    @staticmethod
    def _pointer(buffer):
        return buffer.data.ptr

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def _sum_in_place(self, buffer):
        if not self._on_device(buffer):
            return super()._sum_in_place(buffer)
        pointer = self._pointer(buffer)
        self.nccl_comm.allReduce(pointer, pointer, buffer.size, self.types[buffer.dtype.name],
                                 self.nccl.NCCL_SUM, self._stream())

    def _bcast_in_place(self, buffer):
        if not self._on_device(buffer):
            return super()._bcast_in_place(buffer)
        self.nccl_comm.bcast(self._pointer(buffer), buffer.size, self.types[buffer.dtype.name], 0, self._stream())

    def abort(self, message, code=1):
        try:
            self.nccl_comm.abort()       # kernels waiting for a dead peer would otherwise hold the GPU
        finally:
            super().abort(message, code)
