"""Seeds that make every random draw of a run a function of (seed, iteration): what exact resuming rests on.

The batch loader draws every batch from (seed, iteration, place in the batch) (minidet.data.loader).
The dropout layers draw their masks from a generator each; at the start of a run and after every
checkpoint each restarts its stream from a seed derived from (seed, iteration), in an uninterrupted
run and in a resumed one alike.
"""
import numpy as np

from minidet.nn.dropout import Dropout


def segment_seed(seed, iteration, stream=0, rank=0):
    """A seed for the random draws from `iteration` on: a function of (seed, iteration, stream, rank) only.

    Stream 1 + k is the k-th dropout layer's. Each rank of a data-parallel run draws the masks of
    its own RoIs; rank 0 keeps the stream of a one-process run, the others append their rank.
    """
    entropy = [int(seed), int(iteration), int(stream)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def dropout_layers(model):
    """The model's Dropout layers, in forward order (the k-th draws from stream 1 + k)."""
    return [layer for _, layer in model.named_layers() if isinstance(layer, Dropout)]


def reseed_dropouts(model, seed, iteration, rank=0):
    """Restart every dropout layer's mask stream from a seed derived from (seed, iteration).

    Works alike for the numpy and the cupy generators (the layer makes its generator from `seed`
    on first use). Returns the seeds, for the checkpoint's record.
    """
    dropouts = dropout_layers(model)
    for k, layer in enumerate(dropouts):
        layer.seed = segment_seed(seed, iteration, 1 + k, rank)
        layer.generators = {}
    return [layer.seed for layer in dropouts]
