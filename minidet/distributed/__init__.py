"""Data-parallel training: W processes, one batch split between them, one exact update (docs/DISTRIBUTED.md).

ChainerMN's design: MPI (mpi4py) starts and connects the processes, passes Python objects and
all-reduces host arrays; NCCL (cupy.cuda.nccl) all-reduces GPU arrays; rank 0 alone writes logs,
checkpoints and the final model. Every rank runs the same loop on its share of the global batch
(minidet.data.loader); after the backward, one all-reduce of one flat buffer gives every rank the
gradient of the whole batch (minidet.distributed.flat), and the ordinary SGD step follows on
every rank, so the parameters stay identical.

    comm = make_communicator(distributed=args.distributed, device=args.device)
    comm.rank, comm.size, comm.is_root
    grads, stats = comm.allreduce_gradients(model.grads(), loss, parts, rois=len(labels))

A one-process run (the default) gets SingleProcess, which never imports mpi4py.
"""
from minidet.distributed.communicators import (Communicator, MPICommunicator, NCCLCommunicator, SingleProcess,
                                               install_abort_hook, merge_shards)
from minidet.distributed.scaling import scale_schedule
from minidet.distributed.sharding import detect_dataset_sharded, load_proposals_sharded

BACKENDS = ("auto", "mpi", "nccl")


def choose_backend(distributed, device, backend="auto"):
    """'single', 'mpi' or 'nccl': the communicator of a run on `device` ('cpu' or 'gpu').

    Not distributed: 'single'. Distributed: backend 'auto' is NCCL on the GPU and MPI on the CPU;
    'mpi' on the GPU all-reduces through host copies; 'nccl' needs the GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not distributed:
        if backend != "auto":
            raise ValueError(f"backend {backend!r} is for distributed runs (--distributed)")
        return "single"
    if backend == "auto":
        return "nccl" if device == "gpu" else "mpi"
    if backend == "nccl" and device != "gpu":
        raise ValueError("NCCL all-reduces GPU arrays: train with --device gpu, or use backend 'mpi'")
    return backend


def make_communicator(distributed=False, device="cpu", backend="auto", abort_on_error=True):
    """The run's communicator (see choose_backend); create it first, before anything uses the GPU."""
    kind = choose_backend(distributed, device, backend)
    if kind == "single":
        return SingleProcess()
    if kind == "mpi":
        return MPICommunicator(abort_on_error=abort_on_error)
    return NCCLCommunicator(abort_on_error=abort_on_error)


__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "make_communicator",
           "choose_backend", "install_abort_hook", "merge_shards", "scale_schedule",
           "load_proposals_sharded", "detect_dataset_sharded"]
