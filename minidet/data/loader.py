"""Training batches by hierarchical sampling: N images, then R/N RoIs from each (SPEC.md "Training").

An epoch visits every image once, and once more mirrored when flip=True (the data set doubled),
in a shuffled order; each batch takes the next `images_per_batch` of them (an incomplete tail is
left for the next epoch's shuffle). Each image gets one scale drawn from `scales`, its RoIs are
sampled in the original image's pixels (sampler.sample_rois) and then scaled with the image.

A background thread prepares the next `prefetch` batches while the model works on the current
one. All randomness (order, scales, RoI draws) comes from one generator seeded by `seed` and
consumed in batch order, so a seed always gives the same batches.

Difficult objects are left out unless use_difficult=True, and they are neither object nor
background: proposals that cover one (IoU >= fg_thresh) are removed from that image's candidates,
as the VOC evaluation ignores detections on them. Images that can give no RoI at all (no usable
ground truth and no proposals) are left out of the epochs.
"""
import queue
import threading

import numpy as np

from minidet.boxes import bbox_overlaps
from minidet.data.sampler import sample_rois
from minidet.data.transforms import flip_boxes, flip_image, make_blob, prepare_image


def _annotation(dataset, i):
    return dataset.annotation(i) if hasattr(dataset, "annotation") else dataset[i]


def _image(dataset, i):
    return dataset.load_image(i) if hasattr(dataset, "load_image") else dataset[i]["image"]


class BatchLoader:
    """Iterate to get training batches, forever:

    dict(images (N, 3, H, W) float32 zero-padded, rois (R, 5) float32 [batch index, x1, y1, x2, y2]
    in the scaled images' pixels, labels (R,) int64, bbox_targets and bbox_weights (R, 4 * num_classes)
    float32, ids (N,) image ids, flipped (N,) bool, scales (N,) float).
    proposals: one (P_i, 4) array per dataset index, in the original images' pixels.
    Use as a context manager, or call close(), to stop the background thread.
    """

    def __init__(self, dataset, proposals, convention, num_classes, images_per_batch=2, rois_per_image=64,
                 scales=(600,), max_size=1000, flip=True, use_difficult=False, seed=0, prefetch=2,
                 fg_fraction=0.25, fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=0.1,
                 bbox_means=(0, 0, 0, 0), bbox_stds=(0.1, 0.1, 0.2, 0.2)):
        if len(proposals) != len(dataset):
            raise ValueError(f"{len(proposals)} proposal arrays for {len(dataset)} images")
        self.dataset, self.convention, self.num_classes = dataset, convention, num_classes
        self.images_per_batch, self.scales, self.max_size = images_per_batch, tuple(scales), max_size
        self.flip = flip
        self.sample_settings = dict(rois_per_image=rois_per_image, fg_fraction=fg_fraction, fg_thresh=fg_thresh,
                                    bg_thresh_hi=bg_thresh_hi, bg_thresh_lo=bg_thresh_lo,
                                    bbox_means=bbox_means, bbox_stds=bbox_stds)
        self.gt_boxes, self.gt_labels, self.proposals = [], [], []
        for i in range(len(dataset)):
            gt, labels, props = self._training_boxes(_annotation(dataset, i), proposals[i], use_difficult, fg_thresh)
            self.gt_boxes.append(gt)
            self.gt_labels.append(labels)
            self.proposals.append(props)
        self.usable = [i for i in range(len(dataset)) if len(self.gt_boxes[i]) or len(self.proposals[i])]
        if len(self.usable) * (2 if flip else 1) < images_per_batch:
            raise ValueError(f"only {len(self.usable)} of {len(dataset)} images have ground truth or proposals; "
                             f"a batch needs {images_per_batch}")
        self._rng = np.random.default_rng(seed)
        self._queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="minidet-batch-loader", daemon=True)
        self._thread.start()

    @staticmethod
    def _training_boxes(annotation, proposals, use_difficult, fg_thresh):
        boxes = np.asarray(annotation["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(annotation["labels"], np.int64)
        difficult = np.asarray(annotation["difficult"], bool)
        props = np.asarray(proposals, np.float32).reshape(-1, 4)
        if use_difficult or not difficult.any():
            return boxes, labels, props
        if len(props):
            covers = bbox_overlaps(props.astype(np.float64), boxes[difficult].astype(np.float64)).max(axis=1)
            props = props[covers < fg_thresh]
        return boxes[~difficult], labels[~difficult], props

    @property
    def batches_per_epoch(self):
        return len(self.usable) * (2 if self.flip else 1) // self.images_per_batch

    def _epochs(self):
        """(index, flipped) pairs, epoch after epoch, each epoch shuffled."""
        entries = [(i, False) for i in self.usable] + ([(i, True) for i in self.usable] if self.flip else [])
        while True:
            order = self._rng.permutation(len(entries))
            for start in range(0, len(order) - self.images_per_batch + 1, self.images_per_batch):
                yield [entries[k] for k in order[start:start + self.images_per_batch]]

    def _make_batch(self, entries):
        """The batch of the given (index, flipped) pairs, drawing scales and RoIs from the loader's generator."""
        images, rois, labels, targets, weights, scales = [], [], [], [], [], []
        for n, (i, flipped) in enumerate(entries):
            image, gt, props = _image(self.dataset, i), self.gt_boxes[i], self.proposals[i]
            if flipped:
                width = image.shape[1]
                image, gt, props = flip_image(image), flip_boxes(gt, width), flip_boxes(props, width)
            target_size = self.scales[self._rng.integers(len(self.scales))]
            chw, scale = prepare_image(image, self.convention, target_size, self.max_size)
            r, l, t, w = sample_rois(props, gt, self.gt_labels[i], self.num_classes, rng=self._rng,
                                     **self.sample_settings)
            images.append(chw)
            rois.append(np.concatenate([np.full((len(r), 1), n, np.float32), r * np.float32(scale)], axis=1))
            labels.append(l)
            targets.append(t)
            weights.append(w)
            scales.append(scale)
        return dict(images=make_blob(images), rois=np.concatenate(rois).astype(np.float32),
                    labels=np.concatenate(labels), bbox_targets=np.concatenate(targets),
                    bbox_weights=np.concatenate(weights), ids=[self.dataset.ids[i] for i, _ in entries],
                    flipped=[f for _, f in entries], scales=scales)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self):
        try:
            for entries in self._epochs():
                if self._stop.is_set():
                    return
                self._put(self._make_batch(entries))
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
