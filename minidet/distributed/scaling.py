"""What changes when one run becomes W ranks: the random streams and the learning-rate schedule.

Random streams. The batches need nothing: the loader draws from (seed, iteration, place in the
global batch), the same on any number of ranks. Dropout masks are drawn on each rank for its own
RoIs, so each rank needs a stream of its own: minidet.seeds.segment_seed(..., rank), where rank 0
keeps exactly the stream of a one-process run.

Learning rate (Goyal et al. 2017, "Accurate, large minibatch SGD"): W ranks of N images make a
batch W times larger, and the linear scaling rule multiplies the learning rate by W; so that the
run sees the data as many times as a one-process run, the iterations and the step of the
schedule are divided by W. A large rate is reached by a gradual warmup: from the one-process
rate (factor 1/W) up to W times it, linearly, over the first 5% of the iterations (Goyal et
al.: 5 of 90 epochs); a schedule that already had a warmup keeps its own, shortened W times,
from the same starting rate.
"""
import math


WARMUP_SHARE = 0.05


def scale_schedule(lr, iters, step_size, warmup_iters, warmup_factor, world_size):
    """A one-process schedule for W = world_size ranks: dict(lr, iters, step_size, warmup_iters, warmup_factor).

    lr x W; iters and step_size / W (rounded up; a step_size of 0 or None stays off); warmup:
    the schedule's own over warmup_iters / W iterations from warmup_factor / W, or, without
    one, WARMUP_SHARE of the new iterations from 1 / W (the one-process rate).
    """
    w = int(world_size)
    if w < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if w == 1:
        return dict(lr=lr, iters=iters, step_size=step_size, warmup_iters=warmup_iters, warmup_factor=warmup_factor)
    new_iters = math.ceil(iters / w)
    if warmup_iters:
        warmup = dict(warmup_iters=math.ceil(warmup_iters / w), warmup_factor=warmup_factor / w)
    else:
        warmup = dict(warmup_iters=math.ceil(WARMUP_SHARE * new_iters), warmup_factor=1.0 / w)
    return dict(lr=lr * w, iters=new_iters, step_size=math.ceil(step_size / w) if step_size else step_size, **warmup)
