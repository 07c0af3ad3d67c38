"""Training batches by hierarchical sampling: N images, then R/N RoIs from each (SPEC.md "Training").

Which images a batch holds, and every random draw made for them, is a function of the seed and
the iteration alone. So a loader can start at any iteration without replaying the ones before
it, a resumed run sees the batches an uninterrupted one would, and the ranks of a data-parallel
run split one global batch between them (docs/DISTRIBUTED.md):

    entries   the training images, and each once more mirrored when flip=True: the data set
              doubled, as the original's append_flipped_images does; E entries in all
    epoch e   a permutation of the E entries, drawn from (seed, e)
    slot s    the s-th image of the run: entry order_{s // E}[s % E]; every entry fills
              exactly one slot of each epoch
    batch b   the global batch of iteration b: the slots [b B, (b + 1) B), B = N x world_size;
              rank k takes the N slots [b B + k N, b B + (k + 1) N), in the same order
    draws     the scale and the RoIs of the image at place n of global batch b come from a
              generator seeded by (seed, b, n): the same on one process or on many

A flipped copy is an entry of its own, as in the original, which permutes the doubled list: an
epoch shows each image once as it is and once mirrored, at two independent places. The original
starts a new permutation when fewer than a batch of entries remain (and, by its `>=`, also when
exactly a batch remains), so the last entries of every permutation go unseen; here the slots run
on from one epoch into the next instead, no entry is skipped, and when E is not a multiple of B
one batch holds the end of one epoch and the start of the next (rarely, the same image twice).

A background thread prepares the next `prefetch` batches while the model works on the current one.

Difficult objects are left out unless use_difficult=True: they are then simply not ground truth
(py-faster-rcnn's use_diff=False), and a proposal on one is background or nothing by its IoU with
the other objects. An image that can give no RoI (no ground truth left, so no candidate with
IoU >= bg_thresh_lo) is left out of training with a warning that counts them, as the ports'
filter_roidb does.
"""
import itertools
import queue
import threading
import warnings

import numpy as np

from minidet.data.sampler import has_training_rois, sample_rois
from minidet.data.transforms import flip_boxes, flip_image, make_blob, prepare_image

# Distinct first words of the two seed sequences, so that no order seed equals a draw seed.
ORDER_STREAM = 0x6F72646572      # "order": the epochs' permutations
DRAW_STREAM = 0x64726177         # "draw": each image's scale and RoIs


def epoch_order(seed, epoch, size):
    """The permutation of the `size` entries in epoch `epoch`: (size,) int64, from (seed, epoch) only."""
    sequence = np.random.SeedSequence([ORDER_STREAM, int(seed), int(epoch)])
    return np.random.default_rng(sequence).permutation(size)


def image_rng(seed, iteration, place):
    """The generator of the scale and RoIs of the image at `place` of the global batch of `iteration`."""
    return np.random.default_rng(np.random.SeedSequence([DRAW_STREAM, int(seed), int(iteration), int(place)]))


def _annotation(dataset, i):
    return dataset.annotation(i) if hasattr(dataset, "annotation") else dataset[i]


def _image(dataset, i):
    return dataset.load_image(i) if hasattr(dataset, "load_image") else dataset[i]["image"]


def training_ground_truth(annotation, use_difficult=False):
    """(boxes (G, 4) float32, labels (G,) int64) that training uses: every object, or all but the difficult."""
    boxes = np.asarray(annotation["boxes"], np.float32).reshape(-1, 4)
    labels = np.asarray(annotation["labels"], np.int64).reshape(-1)
    if use_difficult:
        return boxes, labels
    keep = ~np.asarray(annotation["difficult"], bool).reshape(-1)
    return boxes[keep], labels[keep]


class BatchLoader:
    """Iterate to get this rank's share of each global batch, from `start_iteration` on, forever:

    dict(images (N, 3, H, W) float32 zero-padded, rois (R, 5) float32 [batch index, x1, y1, x2, y2]
    in the scaled images' pixels, labels (R,) int64, bbox_targets and bbox_weights (R, 4 * num_classes)
    float32, ids (N,) image ids, flipped (N,) bool, scales (N,) float, iteration int, slots (N,) int).
    proposals: one (P_i, 4) array per dataset index, in the original images' pixels.
    images_per_batch: N, the images of one rank; the global batch holds N x world_size.
    seed: the run's seed itself (not one derived per iteration): see the module docstring.
    Use as a context manager, or call close(), to stop the background thread.
    """

    def __init__(self, dataset, proposals, convention, num_classes, images_per_batch=2, rois_per_image=64,
                 scales=(600,), max_size=1000, flip=True, use_difficult=False, seed=0, start_iteration=0,
                 rank=0, world_size=1, prefetch=2, fg_fraction=0.25, fg_thresh=0.5, bg_thresh_hi=0.5,
                 bg_thresh_lo=0.1, bbox_means=(0, 0, 0, 0), bbox_stds=(0.1, 0.1, 0.2, 0.2)):
        if len(proposals) != len(dataset):
            raise ValueError(f"{len(proposals)} proposal arrays for {len(dataset)} images")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        if images_per_batch < 1 or start_iteration < 0:
            raise ValueError(f"images_per_batch must be >= 1 and start_iteration >= 0, "
                             f"got {images_per_batch} and {start_iteration}")
        self.dataset, self.convention, self.num_classes = dataset, convention, num_classes
        self.images_per_batch, self.scales, self.max_size = images_per_batch, tuple(scales), max_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.global_batch = images_per_batch * world_size
        self.sample_settings = dict(rois_per_image=rois_per_image, fg_fraction=fg_fraction, fg_thresh=fg_thresh,
                                    bg_thresh_hi=bg_thresh_hi, bg_thresh_lo=bg_thresh_lo,
                                    bbox_means=bbox_means, bbox_stds=bbox_stds)
        truth = [training_ground_truth(_annotation(dataset, i), use_difficult) for i in range(len(dataset))]
        self.gt_boxes, self.gt_labels = [boxes for boxes, _ in truth], [labels for _, labels in truth]
        self.proposals = [np.asarray(p, np.float32).reshape(-1, 4) for p in proposals]
        self.usable = [i for i in range(len(dataset))
                       if has_training_rois(self.proposals[i], self.gt_boxes[i], fg_thresh, bg_thresh_hi, bg_thresh_lo)]
        left_out = len(dataset) - len(self.usable)
        if left_out:
            warnings.warn(f"{left_out} of {len(dataset)} images have no RoI to train on (no ground truth"
                          f"{'' if use_difficult else ' other than difficult objects'}, so no candidate with "
                          f"IoU >= {bg_thresh_lo}) and are left out of training", stacklevel=2)
        self.entries = [(i, False) for i in self.usable] + ([(i, True) for i in self.usable] if flip else [])
        if len(self.entries) < self.global_batch:
            raise ValueError(f"only {len(self.usable)} of {len(dataset)} images can give RoIs "
                             f"({len(self.entries)} with flips); a batch needs {self.global_batch}")
        self.start_iteration = int(start_iteration)
        self._orders = {}                   # epoch -> its permutation, the last two kept
        self._queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="minidet-batch-loader", daemon=True)
        self._thread.start()

    # -- which image goes where: pure functions of (seed, iteration) -----------------------------

    @property
    def epoch_size(self):
        """E, the entries of one epoch (the usable images, twice with flips)."""
        return len(self.entries)

    @property
    def batches_per_epoch(self):
        """E / B, global batches per epoch (a fraction when E is not a multiple of B)."""
        return self.epoch_size / self.global_batch

    def slots(self, iteration):
        """The slots of this rank's images in the global batch of `iteration`: N ints."""
        first = iteration * self.global_batch + self.rank * self.images_per_batch
        return list(range(first, first + self.images_per_batch))

    def entry(self, slot):
        """(dataset index, flipped) of the image in `slot`."""
        epoch, place = divmod(slot, self.epoch_size)
        order = self._orders.get(epoch)
        if order is None:
            order = epoch_order(self.seed, epoch, self.epoch_size)
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1} | {epoch: order}
        return self.entries[order[place]]

    # -- making a batch -----------------------------------------------------------------------

    def make_batch(self, iteration):
        """This rank's share of the global batch of `iteration` (the dict the iterator yields)."""
        slots = self.slots(iteration)
        entries = [self.entry(s) for s in slots]
        images, rois, labels, targets, weights, scales = [], [], [], [], [], []
        for n, (i, flipped) in enumerate(entries):
            rng = image_rng(self.seed, iteration, self.rank * self.images_per_batch + n)  # place in the global batch
            image, gt, props = _image(self.dataset, i), self.gt_boxes[i], self.proposals[i]
            if flipped:
                width = image.shape[1]
                image, gt, props = flip_image(image), flip_boxes(gt, width), flip_boxes(props, width)
            target_size = self.scales[rng.integers(len(self.scales))]
            chw, scale = prepare_image(image, self.convention, target_size, self.max_size)
            r, l, t, w = sample_rois(props, gt, self.gt_labels[i], self.num_classes, rng=rng, **self.sample_settings)
            images.append(chw)
            rois.append(np.concatenate([np.full((len(r), 1), n, np.float32), r * np.float32(scale)], axis=1))
            labels.append(l)
            targets.append(t)
            weights.append(w)
            scales.append(scale)
        return dict(images=make_blob(images), rois=np.concatenate(rois).astype(np.float32),
                    labels=np.concatenate(labels), bbox_targets=np.concatenate(targets),
                    bbox_weights=np.concatenate(weights), ids=[self.dataset.ids[i] for i, _ in entries],
                    flipped=[f for _, f in entries], scales=scales, iteration=iteration, slots=slots)

    # -- the background thread ------------------------------------------------------------------

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self):
        try:
            for iteration in itertools.count(self.start_iteration):
                if self._stop.is_set():
                    return
                self._put(self.make_batch(iteration))
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch loader's thread stopped without an error") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self):
        """Stop the background thread and wait for it."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
