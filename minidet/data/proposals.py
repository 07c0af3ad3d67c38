"""Object proposals: selective search (OpenCV's implementation) and a per-image cache.

Fast R-CNN scores a fixed set of candidate boxes per image, about 2000 from selective search
in its "fast" mode (SPEC.md "Proposals"). Computing them is the slowest step of the data
pipeline (seconds per image on one core), so they are computed once per image, in parallel
worker processes, and cached on disk: one .npy file per image, named by a hash of the image
file's bytes and of the settings, so a changed image or changed settings never reuse a stale
file. Files are written atomically (minidet.atomic), an interrupted run resumes where it
stopped, and a damaged file is reported and recomputed. Proposals from other tools' files:
minidet.data.external_proposals; their recall: minidet.data.recall.

Boxes everywhere are (x1, y1, x2, y2), 0-based, pixel-inclusive, float32.
"""
import argparse
import concurrent.futures
import ctypes
import hashlib
import json
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import asdict

import cv2
import numpy as np

from minidet.atomic import atomic_write
from minidet.data.search_setups import MODES, SearchSetup, configure, search_setup  # noqa: F401 (MODES: re-exported)

CACHE_VERSION = 2


def _seed_c_rand():
    """OpenCV ranks the grouped regions with C's rand(): seed it so an image always gives the same order."""
    try:
        ctypes.CDLL(None).srand(0)
    except (OSError, AttributeError, TypeError):
        pass  # no C library to reach (e.g. Windows): the order, not the set of boxes, may then vary


def unique_boxes(boxes):
    """Indices of the first occurrence of each distinct box, in their original order. (N, 4) -> (U,)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    _, first = np.unique(np.ascontiguousarray(boxes).view(np.dtype((np.void, boxes.dtype.itemsize * 4))),
                         return_index=True)
    return np.sort(first)


def filter_small_boxes(boxes, min_size):
    """Indices of the boxes at least min_size pixels wide and high (w = x2 - x1 + 1). (N, 4) -> (K,)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.nonzero((w >= min_size) & (h >= min_size))[0]


def clean_boxes(boxes, min_size=2, max_boxes=None):
    """Drop duplicates and boxes under min_size pixels, keep the first max_boxes. (N, 4) -> (K, 4), order kept."""
    boxes = boxes[unique_boxes(boxes)]
    boxes = boxes[filter_small_boxes(boxes, min_size)]
    return boxes if max_boxes is None else boxes[:max_boxes]


def selective_search(image_bgr, max_boxes=2000, mode="fast", min_size=2, max_side=500):
    """Selective-search proposals of one image.

    image_bgr (H, W, 3) uint8 (or (H, W) grey) -> (P, 4) float32 boxes inside the image, P <= max_boxes
    (None: all), in OpenCV's ranking (most likely objects first), without duplicates or boxes under
    min_size pixels. mode: a name of MODES or a SearchSetup. Images whose longer side exceeds
    max_side are searched at that size (the original proposals were computed on VOC's images of at
    most 500 pixels) and the boxes scaled back; max_side=None searches at full size. The ranking's
    random tie-breaking is seeded, so the same image always gives the same boxes.
    """
    setup = search_setup(mode)
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    height, width = image_bgr.shape[:2]
    scale = 1.0
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        image_bgr = cv2.resize(image_bgr, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image_bgr)
    configure(ss, image_bgr, setup)
    _seed_c_rand()
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)   # (x, y, w, h)
    boxes = np.empty_like(rects)
    boxes[:, :2] = rects[:, :2]
    boxes[:, 2:] = rects[:, :2] + rects[:, 2:] - 1
    if scale != 1.0:
        # A searched pixel i covers original pixels [i / s, (i + 1) / s - 1].
        boxes[:, :2] = np.floor(boxes[:, :2] / scale)
        boxes[:, 2:] = np.ceil((boxes[:, 2:] + 1) / scale) - 1
    np.clip(boxes[:, 0::2], 0, width - 1, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height - 1, out=boxes[:, 1::2])
    return clean_boxes(boxes.astype(np.float32), min_size, max_boxes)


def _settings(max_boxes, mode, min_size, max_side):
    """The cache key's settings; they hold the setup itself, so that a changed mode never reuses old files."""
    setup = search_setup(mode)
    return dict(version=CACHE_VERSION, max_boxes=None if max_boxes is None else int(max_boxes),
                mode=mode if isinstance(mode, str) else "custom", setup=asdict(setup), min_size=float(min_size),
                max_side=None if max_side is None else int(max_side))


def cache_path(cache_dir, image_id, image_path, settings):
    """The cache file of one image: its id (for people) and a hash of its bytes and the settings."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    with open(image_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(image_id))
    return os.path.join(cache_dir, f"{safe_id}-{digest.hexdigest()[:16]}.npy")


def read_cache(path):
    """The cached (P, 4) float32 boxes, None if there is no file, and None with a warning if it is damaged."""
    if not os.path.exists(path):
        return None
    try:
        boxes = np.load(path, allow_pickle=False)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype != np.float32:
            raise ValueError(f"holds a {boxes.dtype} array of shape {boxes.shape}, not (P, 4) float32")
    except (OSError, ValueError, EOFError) as e:
        warnings.warn(f"{path}: damaged proposal cache file ({e}); recomputing it", stacklevel=2)
        return None
    return boxes


def write_cache(path, boxes):
    """Write atomically: a reader sees the old file, no file, or the whole new one."""
    with atomic_write(path) as f:
        np.save(f, boxes)


def _compute(image_path, out_path, settings):
    """Work of one image in a worker: search, cache, return (boxes, seconds)."""
    cv2.setNumThreads(1)  # the workers already use every core
    start = time.process_time()   # CPU time: what the image costs, however busy the machine
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{image_path}: image file is missing or cannot be decoded")
    boxes = selective_search(image, settings["max_boxes"], SearchSetup(**settings["setup"]), settings["min_size"],
                             settings["max_side"])
    write_cache(out_path, boxes)
    return boxes, time.process_time() - start


def _pool_context():
    """Worker processes are spawned, never forked: a forked worker inherits the locks of the parent's
    native thread pools (OpenCV's, OpenMP's, BLAS's) but not their threads, and could wait on them
    forever (seen after training, when the test split's proposals were computed). Scripts that call
    load_proposals with workers > 1 need the usual `if __name__ == "__main__":` guard."""
    return multiprocessing.get_context("spawn")


def proposals_cache_dir(data_dir, run_dir, proposals_dir=None):
    """Where proposals are cached (one file per image, named by image and settings, any split):
    proposals_dir when given; else DATA_DIR/proposals_cache, as `minidet proposals` uses, when the
    data folder is writable; else a proposals_cache folder beside the run folder."""
    if proposals_dir:
        return proposals_dir
    if os.access(data_dir, os.W_OK):
        return os.path.join(data_dir, "proposals_cache")
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), "proposals_cache",
                        os.path.basename(os.path.abspath(data_dir)))


def load_proposals(dataset, cache_dir, workers=2, max_boxes=2000, mode="fast", min_size=2, max_side=500,
                   progress=True, stats=None):
    """Selective-search proposals for every image of a data set, computed once and cached.

    dataset: a VOCDataset (ids and image_path(i) are used); mode: a name of MODES or a SearchSetup;
    max_boxes None: all. Returns a list of (P_i, 4) float32 arrays, one per ds index. Images without
    a valid cache file are computed in `workers` processes (0 or 1: in this process). stats, a dict
    if given, receives computed/cached counts and the mean CPU seconds per computed image.
    """
    os.makedirs(cache_dir, exist_ok=True)
    settings = _settings(max_boxes, mode, min_size, max_side)
    paths = [cache_path(cache_dir, dataset.ids[i], dataset.image_path(i), settings) for i in range(len(dataset))]
    results = [read_cache(p) for p in paths]
    todo = [i for i, r in enumerate(results) if r is None]
    seconds = []
    if todo:
        bar = _progress(len(todo), progress, f"selective search ({settings['mode']})")
        if workers <= 1:
            for i in todo:
                results[i], s = _compute(dataset.image_path(i), paths[i], settings)
                seconds.append(s)
                bar.update(1)
        else:
            pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=_pool_context())
            try:
                futures = {pool.submit(_compute, dataset.image_path(i), paths[i], settings): i for i in todo}
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]], s = future.result()
                    seconds.append(s)
                    bar.update(1)
            except BaseException:
                # Ctrl-C or a failed image: drop the queue rather than wait for it; what is
                # finished is cached, and the next call resumes from there.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        bar.close()
    if stats is not None:
        stats.update(computed=len(todo), cached=len(paths) - len(todo),
                     seconds_per_image=float(np.mean(seconds)) if seconds else None)
    return results


def _progress(total, enabled, desc):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="image", disable=not enabled, file=sys.stderr)


def main(argv=None):
    """`minidet proposals`: compute and cache the proposals of one split, and report their recall."""
    from minidet.data.recall import proposal_recall
    from minidet.data.voc import VOCDataset

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--recall" in argv:
        from minidet.data import recall
        return recall.main([a for a in argv if a != "--recall"])
    parser = argparse.ArgumentParser(
        prog="minidet proposals", description=main.__doc__.split(":", 1)[1].strip(),
        epilog="minidet proposals --recall --help: recall against boxes per image, per mode")
    add_search_arguments(parser)
    parser.add_argument("--mode", choices=MODES, default="fast", help="selective-search setup (default: fast)")
    parser.add_argument("--max-boxes", type=int, default=2000, help="at most this many boxes per image (default: 2000)")
    args = parser.parse_args(argv)
    try:
        dataset = VOCDataset(args.data_dir, args.split, args.classes.split(",") if args.classes else None)
    except (OSError, ValueError) as e:
        print(f"minidet proposals: {e}", file=sys.stderr)
        return 2
    cache_dir = args.cache_dir or os.path.join(args.data_dir, "proposals_cache")
    stats = {}
    start = time.perf_counter()
    proposals = load_proposals(dataset, cache_dir, args.workers, args.max_boxes, args.mode, args.min_size,
                               args.max_side or None, stats=stats)
    elapsed = time.perf_counter() - start
    counts = np.array([len(p) for p in proposals])
    print(f"{len(dataset)} images of {args.data_dir} ({args.split}); cache: {cache_dir}")
    print(f"computed {stats['computed']}, from cache {stats['cached']}, wall time {elapsed:.1f} s")
    if stats["seconds_per_image"] is not None:
        print(f"seconds/image (CPU time of one worker): {stats['seconds_per_image']:.3f}")
    print(f"proposals/image: mean {counts.mean():.0f}, min {counts.min()}, max {counts.max()}")
    recall = proposal_recall(proposals, dataset, 0.5)
    if recall == recall:
        print(f"recall of the ground-truth boxes at IoU 0.5: {recall:.3f}")
    return 0


def add_search_arguments(parser):
    """The options that `minidet proposals` and `minidet proposals --recall` share."""
    parser.add_argument("--data-dir", required=True, help="a VOC-layout folder (ImageSets/, Annotations/, JPEGImages/)")
    parser.add_argument("--split", default="trainval", help="ImageSets/Main/SPLIT.txt (default: trainval)")
    parser.add_argument("--classes", default=None, help="comma-separated class names when there is no classes.txt")
    parser.add_argument("--cache-dir", default=None, help="where the .npy files go (default: DATA_DIR/proposals_cache)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--min-size", type=float, default=2, help="drop boxes narrower or lower than this (default: 2)")
    parser.add_argument("--max-side", type=int, default=500,
                        help="search images larger than this at this longer side (default: 500; 0: full size)")


def __getattr__(name):
    if name == "load_mat_proposals":   # its home is now external_proposals; old imports still work
        from minidet.data.external_proposals import load_mat_proposals
        return load_mat_proposals
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
