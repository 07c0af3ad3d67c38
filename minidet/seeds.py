"""Seeds that make every random draw of a run a function of (seed, iteration): what exact resuming rests on.

The batch loader prepares batches in a background thread, so its generator's state at a given
iteration is not something it can hand out. Instead, at the start of a run and after every
checkpoint, the loader is created anew and each dropout layer restarts its mask stream, from seeds
derived from (seed, iteration), in an uninterrupted run and in a resumed one alike.
"""
import numpy as np

from minidet.nn.dropout import Dropout


def segment_seed(seed, iteration, stream=0):
    """A seed for the random draws from `iteration` on: a function of (seed, iteration, stream) only.

    Stream 0 is the batch loader's, stream 1 + k the k-th dropout layer's.
    """
    return int(np.random.SeedSequence([int(seed), int(iteration), int(stream)]).generate_state(1)[0])


def dropout_layers(model):
    """The model's Dropout layers, in forward order (the k-th draws from stream 1 + k)."""
    return [layer for _, layer in model.named_layers() if isinstance(layer, Dropout)]


def reseed_dropouts(model, seed, iteration):
    """Restart every dropout layer's mask stream from a seed derived from (seed, iteration).

    Works alike for the numpy and the cupy generators (the layer makes its generator from `seed`
    on first use). Returns the seeds, for the checkpoint's record.
    """
    dropouts = dropout_layers(model)
    for k, layer in enumerate(dropouts):
        layer.seed = segment_seed(seed, iteration, 1 + k)
        layer.generators = {}
    return [layer.seed for layer in dropouts]
