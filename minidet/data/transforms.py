"""From a decoded image to the network's input: rescale, normalise, flip, pad into a batch.

Fast R-CNN rescales each image so that its shorter side is `target_size` pixels unless
its longer side would then exceed `max_size`, in which case the longer side is `max_size`:

    scale = min(target_size / min(H, W), max_size / max(H, W))

Boxes in the rescaled image are the original boxes times `scale`.
"""
import cv2
import numpy as np


def image_scale(height, width, target_size=600, max_size=1000):
    """The factor that brings the shorter side to target_size, capped so the longer side stays <= max_size."""
    short, long = min(height, width), max(height, width)
    return min(float(target_size) / short, float(max_size) / long)


def normalize(image_bgr, convention):
    """(H, W, 3) uint8 BGR -> (3, H, W) float32: x = (image_in_channel_order / 255 * pixel_range - mean) / std."""
    image = image_bgr if convention.channel_order == "BGR" else image_bgr[:, :, ::-1]
    x = image.astype(np.float32) * np.float32(convention.pixel_range / 255.0)
    x -= np.asarray(convention.mean, np.float32)
    x /= np.asarray(convention.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare_image(image_bgr, convention, target_size=600, max_size=1000):
    """Rescale (bilinear) and normalise one image.

    image_bgr (H, W, 3) uint8 -> (chw (3, H', W') float32, scale) with H' = round(H * scale),
    W' = round(W * scale), scale from image_scale(H, W, target_size, max_size).
    """
    height, width = image_bgr.shape[:2]
    scale = image_scale(height, width, target_size, max_size)
    if scale != 1.0:
        # fx, fy rather than a target size: pixels map by exactly `scale`, as the boxes do.
        image_bgr = cv2.resize(image_bgr, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return normalize(image_bgr, convention), scale


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
