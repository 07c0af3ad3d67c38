"""The embedded data set: textured scenes of five shapes, written as a VOC-layout folder.

A new machine needs data to show the whole pipeline working, and PASCAL VOC is a large
download. This module draws a small detection data set instead, in seconds, in exactly
the VOC layout (JPEGImages/, Annotations/, ImageSets/Main/{trainval,test}.txt, classes.txt),
so that it goes through the same reader, proposals, training and evaluation as VOC does.

What makes it a detection problem rather than a colour threshold:
- the classes differ only in shape (disc, ring, triangle, cross, star); every object's
  colour and texture (flat, gradient, stripes, checks) come from one distribution for all;
- objects vary in scale (about 20-50% of the shorter image side) and aspect ratio,
  rotate freely, and overlap one another;
- backgrounds are cluttered: muted colour fields, noise, line segments, rectangles and
  dots that are not objects; an object's colours keep a minimum distance from the
  background under it, so that its outline, the thing to learn, is visible.
Boxes are tight around the visible pixels, as VOC's guidelines ask. Objects that are tiny
or more than 30% hidden are marked difficult (left out of training and of the mAP).

The default set, 400 trainval and 150 test images of 320x240 with 1-4 objects each, is sized
for the CPU demo: proposals, training a small network from scratch and evaluation in minutes.

Write it once with write_synthetic_voc(root); calling it again with the same settings
finds the finished folder (manifest.json) and does nothing.
"""
import json
import os
import shutil
import uuid

import cv2
import numpy as np

from minidet.data.voc import write_voc_xml

CLASSES = ("disc", "ring", "triangle", "cross", "star")
# The selective-search setup (minidet.data.proposals) suited to these scenes: on the test split
# it finds 98-99% of the objects at IoU 0.5, as "fast" does, in about a third of the time.
PROPOSAL_MODE = "compact"
FORMAT_VERSION = 2
SPLIT_SEED = {"trainval": 1, "test": 2}  # each split its own random stream

# Share of the shorter image side covered by an object's longer extent.
SIZE_RANGE = (0.2, 0.5)
TINY_RANGE = (0.07, 0.11)        # tiny objects: annotated, marked difficult
TINY_PROBABILITY = 0.08
ASPECT_RANGE = (0.7, 1.4)        # width / height before rotation
MIN_VISIBLE = 0.6                # a placement that hides more of an object is redrawn
DIFFICULT_VISIBLE = 0.7          # less visible than this: difficult
OBJECT_COUNT_P = (0.3, 0.3, 0.25, 0.15)   # 1, 2, 3 or 4 objects per image
TEXTURE_P = (0.5, 0.3, 0.1, 0.1)          # flat, gradient, stripes, checks
MIN_CONTRAST = 80.0                       # BGR distance of an object's colours from the background under it


def _unit_outline(kind, rng):
    """Polygon(s) of a shape in a [-1, 1]^2 frame: list of (n, 2) arrays; the second, if any, is a hole."""
    if kind in ("disc", "ring"):
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        if kind == "disc":
            return [outer]
        return [outer, outer * rng.uniform(0.45, 0.62)]
    if kind == "triangle":
        t = np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        return [np.stack([np.cos(t), np.sin(t)], 1)]
    if kind == "cross":
        a = rng.uniform(0.24, 0.36)   # half the arm width
        return [np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                          [-a, a], [-1, a], [-1, -a], [-a, -a]], float)]
    if kind == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    raise ValueError(f"unknown shape {kind!r}")


def _shape_mask(kind, center, half_size, angle, image_shape, rng):
    """Anti-aliased coverage (H, W) uint8 in 0..255 of one shape."""
    polys = _unit_outline(kind, rng)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    shift = 4  # fixed-point sub-pixel vertices for smooth edges
    canvas = np.zeros(image_shape, np.uint8)
    for k, poly in enumerate(polys):
        fixed = np.round(((poly * half_size) @ rotation.T + center) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 0 if k else 255, lineType=cv2.LINE_AA, shift=shift)
    return canvas


def _random_colour(rng):
    return rng.uniform(0, 255, 3)


def _contrasting_colour(rng, against):
    """A uniform random colour at least MIN_CONTRAST away (BGR distance) from `against`."""
    while True:
        colour = _random_colour(rng)
        if np.linalg.norm(colour - against) >= MIN_CONTRAST:
            return colour.astype(np.float32)


def _texture(rng, shape, background):
    """An object's fill (h, w, 3) float32, standing out from the mean background colour under it.

    The same distribution whatever the class: flat, linear gradient, stripes or checks of two colours.
    """
    h, w = shape
    kind = rng.choice(4, p=TEXTURE_P)
    a, b = _contrasting_colour(rng, background), _contrasting_colour(rng, background)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    u = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
    if kind == 0:      # flat
        mix = np.zeros((h, w), np.float32)
    elif kind == 1:    # linear gradient
        mix = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    elif kind == 2:    # stripes
        period = rng.uniform(6, 16)
        mix = (np.sin(u * np.float32(2 * np.pi / period)) > 0).astype(np.float32)
    else:              # checks
        period = np.float32(rng.uniform(6, 14))
        v = yy * np.float32(np.cos(theta)) - xx * np.float32(np.sin(theta))
        mix = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    fill = a + mix[..., None] * (b - a)
    return fill + rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2, 10))


def _background(rng, shape):
    """Smooth colour field + grain + clutter (lines, rectangles, dots), (H, W, 3) float32."""
    h, w = shape
    # Muted colour fields, so that objects (any colour) can stand out from them.
    coarse = 128 + (rng.uniform(0, 255, (rng.integers(2, 5), rng.integers(2, 5), 3)) - 128) * rng.uniform(0.3, 0.7)
    coarse = coarse.astype(np.float32)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), rng.uniform(0.6, 2.0))
    image += (grain * rng.uniform(4, 18))[..., None]
    side = min(h, w)
    for _ in range(rng.integers(1, 6)):
        p, q = rng.uniform(0, (w, h)), rng.uniform(0, (w, h))
        cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), _random_colour(rng).tolist(),
                 int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):
        c = rng.uniform(0, (w, h))
        size = rng.uniform(0.03, 0.14, 2) * side
        box = ((float(c[0]), float(c[1])), (float(size[0]), float(size[1])), float(rng.uniform(0, 90)))
        corners = cv2.boxPoints(box).astype(np.int32)
        cv2.fillPoly(image, [corners], _random_colour(rng).tolist(), lineType=cv2.LINE_AA)
    for _ in range(rng.integers(0, 10)):
        c = rng.uniform(0, (w, h))
        cv2.circle(image, (int(c[0]), int(c[1])), int(rng.integers(1, 4)), _random_colour(rng).tolist(), -1,
                   cv2.LINE_AA)
    return image


def render_scene(rng, image_size=(240, 320)):
    """One image and its objects.

    Returns image (H, W, 3) uint8 BGR, boxes (G, 4) float32 0-based pixel-inclusive around the
    visible pixels, names (G,) class names, difficult (G,) bool.
    """
    h, w = image_size
    image = _background(rng, (h, w))
    side = min(h, w)
    count = rng.choice(len(OBJECT_COUNT_P), p=OBJECT_COUNT_P) + 1
    masks, alphas, kinds, tiny, windows = [], [], [], [], []
    for _ in range(count):
        for _attempt in range(30):
            kind = CLASSES[rng.integers(len(CLASSES))]
            is_tiny = rng.uniform() < TINY_PROBABILITY
            extent = rng.uniform(*(TINY_RANGE if is_tiny else SIZE_RANGE)) * side
            aspect = np.exp(rng.uniform(np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1])))
            half = 0.5 * extent * np.array([min(aspect, 1.0), min(1.0 / aspect, 1.0)])
            angle = rng.uniform(0, 2 * np.pi)
            reach = np.hypot(*half) + 2  # a rotated shape stays inside this radius
            if 2 * reach >= side:
                continue
            center = rng.uniform((reach, reach), (w - reach, h - reach))
            cover = _shape_mask(kind, center, half, angle, (h, w), rng)
            mask = cover > 127
            area = mask.sum()
            if area == 0:
                continue
            # The new shape lies on top: every earlier object must stay visible enough.
            if all((m & ~mask).sum() >= MIN_VISIBLE * m.sum() for m in masks):
                masks.append(mask)
                kinds.append(kind)
                tiny.append(is_tiny)
                x0, y0 = np.maximum(np.floor(center - reach), 0).astype(int)
                x1, y1 = np.minimum(np.ceil(center + reach) + 1, (w, h)).astype(int)
                window = (slice(y0, y1), slice(x0, x1))
                windows.append(window)
                alphas.append(cover[window].astype(np.float32)[..., None] / 255.0)
                break
    boxes, difficult = [], []
    on_top = np.zeros((h, w), bool)
    for mask in reversed(masks):  # the last drawn is on top
        visible = mask & ~on_top
        ys, xs = np.nonzero(visible)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
        difficult.append(visible.sum() < DIFFICULT_VISIBLE * mask.sum())
        on_top |= mask
    boxes, difficult = boxes[::-1], difficult[::-1]
    difficult = [d or t for d, t in zip(difficult, tiny)]
    for alpha, window in zip(alphas, windows):
        crop = image[window]
        fill = _texture(rng, crop.shape[:2], crop.reshape(-1, 3).mean(axis=0))
        image[window] = crop + alpha * (fill - crop)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(1, 5))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, np.array(boxes, np.float32).reshape(-1, 4), list(kinds), np.array(difficult, bool)


def _settings(seed, num_trainval, num_test, image_size):
    return dict(generator="minidet.data.synthetic", format_version=FORMAT_VERSION, seed=int(seed),
                num_trainval=int(num_trainval), num_test=int(num_test),
                image_size=[int(image_size[0]), int(image_size[1])], classes=list(CLASSES))


def _split_ids(num_trainval, num_test):
    return {"trainval": [f"{i:06d}" for i in range(1, num_trainval + 1)],
            "test": [f"{i:06d}" for i in range(num_trainval + 1, num_trainval + num_test + 1)]}


def _read_manifest(root):
    try:
        with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root, settings):
    """True when root holds the data set these settings describe, every file present."""
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("settings") != settings:
        return False
    for split, ids in _split_ids(settings["num_trainval"], settings["num_test"]).items():
        if not os.path.isfile(os.path.join(root, "ImageSets", "Main", f"{split}.txt")):
            return False
        for name in ids:
            if not (os.path.isfile(os.path.join(root, "JPEGImages", f"{name}.jpg"))
                    and os.path.isfile(os.path.join(root, "Annotations", f"{name}.xml"))):
                return False
    return True


def _write_all(folder, settings):
    h, w = settings["image_size"]
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub))
    counts = {}
    for split, ids in _split_ids(settings["num_trainval"], settings["num_test"]).items():
        objects = difficult_count = 0
        for k, name in enumerate(ids):
            rng = np.random.default_rng([settings["seed"], SPLIT_SEED[split], k])
            image, boxes, names, difficult = render_scene(rng, (h, w))
            cv2.imwrite(os.path.join(folder, "JPEGImages", f"{name}.jpg"), image,
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            write_voc_xml(os.path.join(folder, "Annotations", f"{name}.xml"), f"{name}.jpg", (h, w),
                          boxes, names, difficult)
            objects += len(boxes)
            difficult_count += int(difficult.sum())
        with open(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in ids))
        counts[split] = dict(images=len(ids), objects=objects, difficult=difficult_count)
    with open(os.path.join(folder, "classes.txt"), "w") as f:
        f.write("".join(f"{name}\n" for name in CLASSES))
    # Written last: its presence says the folder is complete.
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(dict(settings=settings, counts=counts), f, indent=2)


def write_synthetic_voc(root, seed=0, num_trainval=400, num_test=150, image_size=(240, 320)):
    """Write the synthetic data set as a VOC-layout folder at root and return root.

    image_size (H, W). Nothing is written when root already holds the data set made with
    the same settings. The set is drawn in a temporary folder beside root and renamed into
    place at the end, so an interrupted run leaves no half-written root. An existing root
    is replaced only if it is an older synthetic set (it has a manifest.json) or empty.
    """
    root = os.path.abspath(os.fspath(root))
    settings = _settings(seed, num_trainval, num_test, image_size)
    if is_complete(root, settings):
        return root
    if os.path.exists(root) and os.listdir(root) and _read_manifest(root) is None:
        raise FileExistsError(f"{root}: exists and is not a synthetic data set; choose another folder")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(root)}.partial-{uuid.uuid4().hex[:8]}")
    try:
        _write_all(tmp, settings)
        if os.path.exists(root):
            old = os.path.join(parent, f".{os.path.basename(root)}.old-{uuid.uuid4().hex[:8]}")
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process finished the same folder first.
            if not is_complete(root, settings):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv=None):
    """`python -m minidet.data.synthetic ROOT [--seed S]`: write the data set."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m minidet.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder to write (VOC layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-trainval", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=150)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args(argv)
    root = write_synthetic_voc(args.root, args.seed, args.num_trainval, args.num_test, (args.height, args.width))
    print(json.dumps(_read_manifest(root), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
