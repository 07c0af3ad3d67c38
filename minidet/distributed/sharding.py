"""Work split by image between the ranks, then brought together: proposals and evaluation.

Image i belongs to rank i mod W (Communicator.shard). Proposals: each rank computes its own
images into the proposal cache (minidet.data.proposals writes one file per image, atomically),
a barrier waits for all of them, and every rank then reads the whole cache; this needs a cache
folder that every rank sees (a shared file system). Evaluation: each rank detects on its own
images and Communicator.gather_to_root brings the detections to rank 0 in image order.
A rank's images are a minidet.data.dataset.DatasetSubset.
"""


def load_proposals_sharded(comm, dataset, cache_dir, progress=True, **kwargs):
    """minidet.data.proposals.load_proposals with the computing split between the ranks.

    Every rank computes the uncached images of its shard, all wait at a barrier, and each then
    reads every image's proposals from the cache: returns the whole list on every rank. kwargs
    go to load_proposals (workers, mode, ...); only rank 0 shows a progress bar.
    """
    from minidet.data.dataset import DatasetSubset
    from minidet.data.proposals import load_proposals

    if comm.size > 1:
        mine = DatasetSubset(dataset, comm.shard(range(len(dataset))))
        load_proposals(mine, cache_dir, progress=progress and comm.is_root, **kwargs)
        comm.barrier()
    return load_proposals(dataset, cache_dir, progress=progress and comm.is_root, **kwargs)


def detect_dataset_sharded(comm, model, dataset, proposals, convention, **kwargs):
    """minidet.inference.detect_dataset over this rank's images, gathered: (boxes, labels, scores)
    lists for every image on rank 0, None on the other ranks. kwargs go to detect_dataset."""
    from minidet.data.dataset import DatasetSubset
    from minidet.inference import detect_dataset

    mine = comm.shard(range(len(dataset)))
    kwargs["progress"] = kwargs.get("progress", True) and comm.is_root
    boxes, labels, scores = detect_dataset(model, DatasetSubset(dataset, mine), [proposals[i] for i in mine],
                                           convention, **kwargs)
    merged = comm.gather_to_root(list(zip(boxes, labels, scores)), len(dataset))
    if merged is None:
        return None
    return [m[0] for m in merged], [m[1] for m in merged], [m[2] for m in merged]
