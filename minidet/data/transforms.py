"""From a decoded image to the network's input: normalise, rescale, flip, pad into a batch.

Fast R-CNN rescales each image so that its shorter side is `target_size` pixels unless its
longer side would then come out longer than `max_size` pixels, in which case the longer side is
`max_size` (the original's test of the rounded length, lib/utils/blob.py prep_im_for_blob):

    scale = target_size / min(H, W),  or max_size / max(H, W) if round(scale * max(H, W)) > max_size

Boxes in the rescaled image are the original boxes times `scale`. As in the original, the pixels
are normalised first, in floating point, and the normalised image is resized: resizing the uint8
image first would round every resized pixel to an integer (up to 0.5 away from the original's).
"""
import cv2
import numpy as np


def image_scale(height, width, target_size=600, max_size=1000):
    """The factor that brings the shorter side to target_size, unless the longer side would then
    exceed max_size once rounded to whole pixels: then the factor that makes it max_size."""
    short, long = min(height, width), max(height, width)
    scale = float(target_size) / float(short)
    if np.round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return scale


def _normalized_hwc(image_bgr, convention):
    """(H, W, 3) uint8 BGR -> (H, W, 3) float32 in the convention's channel order and units.

    Computed in float64 and rounded once, so that the Caffe convention gives exactly the
    original's float32(pixel - mean)."""
    image = image_bgr if convention.channel_order == "BGR" else image_bgr[:, :, ::-1]
    x = image * (convention.pixel_range / 255.0)
    x -= np.asarray(convention.mean, np.float64)
    x /= np.asarray(convention.std, np.float64)
    return x.astype(np.float32)


def normalize(image_bgr, convention):
    """(H, W, 3) uint8 BGR -> (3, H, W) float32: x = (image_in_channel_order / 255 * pixel_range - mean) / std."""
    return np.ascontiguousarray(_normalized_hwc(image_bgr, convention).transpose(2, 0, 1))


def prepare_image(image_bgr, convention, target_size=600, max_size=1000):
    """Normalise and rescale (bilinear) one image, in that order, as the original prepares a blob.

    image_bgr (H, W, 3) uint8 -> (chw (3, H', W') float32, scale) with H' = round(H * scale),
    W' = round(W * scale), scale from image_scale(H, W, target_size, max_size).
    """
    height, width = image_bgr.shape[:2]
    scale = image_scale(height, width, target_size, max_size)
    x = _normalized_hwc(image_bgr, convention)
    if scale != 1.0:
        # fx, fy rather than a target size: pixels map by exactly `scale`, as the boxes do.
        x = cv2.resize(x, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(x.transpose(2, 0, 1)), scale


def flip_image(image):
    """Mirror left-right. (H, W, C) -> (H, W, C), a copy."""
    return np.ascontiguousarray(image[:, ::-1])


def flip_boxes(boxes, width):
    """Mirror boxes (N, 4) 0-based pixel-inclusive in an image `width` wide:
    x1' = W - x2 - 1, x2' = W - x1 - 1; y unchanged."""
    flipped = np.array(boxes, copy=True)
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped


def make_blob(images):
    """Stack (3, h_i, w_i) images into (N, 3, max h, max w), zero-padded at the bottom and right.

    The padding comes after normalisation, so it is 0 in the network's input space.
    """
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    blob = np.zeros((len(images), 3, height, width), dtype=images[0].dtype)
    for n, im in enumerate(images):
        blob[n, :, :im.shape[1], :im.shape[2]] = im
    return blob
