"""Rescaling rules, normalisation per convention, the original's blob preparation, flips, the padded batch blob."""
import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidet.convention import CAFFE, TORCHVISION, InputConvention
from minidet.data.transforms import flip_boxes, flip_image, image_scale, make_blob, normalize, prepare_image
from minidet.convention import SCRATCH

PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])   # the original's cfg.PIXEL_MEANS, float64


def original_blob_image(image_bgr, target_size, max_size):
    """lib/utils/blob.py prep_im_for_blob, written out: float32, minus the means, then resized."""
    im = image_bgr.astype(np.float32)
    im -= PIXEL_MEANS
    short, long = min(im.shape[:2]), max(im.shape[:2])
    scale = float(target_size) / float(short)
    if np.round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR), scale


def normalized_then_resized(image_bgr, convention, scale):
    """Any convention the original's way: normalised in float32 (per channel, in its channel order),
    then resized bilinearly."""
    im = image_bgr[:, :, ::-1] if convention.channel_order == "RGB" else image_bgr
    im = im.astype(np.float32) / np.float32(255.0) * np.float32(convention.pixel_range)
    im = (im - np.float32(convention.mean)) / np.float32(convention.std)
    return cv2.resize(im.astype(np.float32), None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("shape, target, max_size, scale, out", [
    ((375, 500), 600, 1000, 1.6, (600, 800)),        # shorter side to 600
    ((500, 375), 600, 1000, 1.6, (800, 600)),
    ((300, 1000), 600, 1000, 1.0, (300, 1000)),      # 600 / 300 = 2 would make 2000 > 1000: capped at 1000 / 1000
    ((200, 800), 600, 1000, 1.25, (250, 1000)),      # cap: 1000 / 800
    ((240, 320), 240, 1000, 1.0, (240, 320)),        # already there
    ((480, 640), 240, 1000, 0.5, (240, 320)),        # downscale
])
def test_prepare_image_scale_rules(shape, target, max_size, scale, out):
    image = np.zeros(shape + (3,), np.uint8)
    chw, s = prepare_image(image, CAFFE, target, max_size)
    assert s == pytest.approx(scale)
    assert chw.shape == (3,) + out and chw.dtype == np.float32
    assert image_scale(*shape, target, max_size) == pytest.approx(scale)


@pytest.mark.parametrize("shape, target, max_size, scale", [
    ((7, 12), 6, 10, 6 / 7),      # 12 * 6/7 = 10.29 rounds to 10, not above 10: the shorter side rules
    ((12, 7), 6, 10, 6 / 7),      #   (min(6/7, 10/12) would have capped it at 10/12)
    ((7, 13), 6, 10, 10 / 13),    # 13 * 6/7 = 11.14 rounds to 11 > 10: capped
    ((4, 7), 6, 10, 1.5),         # 7 * 1.5 = 10.5 rounds half to even, to 10: not capped
    ((1199, 1999), 600, 1000, 600 / 1199),   # 1000.33 at VOC's sizes
])
def test_image_scale_caps_on_the_rounded_longer_side(shape, target, max_size, scale):
    assert image_scale(*shape, target, max_size) == scale


@pytest.mark.parametrize("shape, target", [((37, 50), 60), ((50, 37), 24), ((31, 29), 29), ((40, 90), 70)])
def test_prepare_image_equals_the_originals_prep_im_for_blob(shape, target, rng):
    # the Caffe convention bit for bit: the same float32 image minus the same means, the same resize
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    expected, expected_scale = original_blob_image(image, target, max_size=100)
    chw, scale = prepare_image(image, CAFFE, target, max_size=100)
    assert scale == expected_scale
    np.testing.assert_array_equal(chw.transpose(1, 2, 0), expected)


@pytest.mark.parametrize("convention", [CAFFE, TORCHVISION, SCRATCH], ids=["caffe", "torchvision", "scratch"])
@pytest.mark.parametrize("target", [60, 24])
def test_prepare_image_normalises_before_resizing_in_every_convention(convention, target, rng):
    # Resizing the uint8 image first rounds each resized pixel to an integer: up to 0.5 grey levels
    # away, far above 1e-3 in every convention's units.
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    chw, scale = prepare_image(image, convention, target, max_size=1000)
    expected = normalized_then_resized(image, convention, scale)
    assert chw.shape == (3,) + expected.shape[:2]
    assert np.abs(chw.transpose(1, 2, 0) - expected).max() <= 1e-3


def test_caffe_convention_subtracts_bgr_means():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30          # B, G, R
    x = normalize(image, CAFFE)
    np.testing.assert_allclose(x[:, 0, 0], [10 - 102.9801, 20 - 115.9465, 30 - 122.7717], rtol=1e-6)


def test_torchvision_convention_is_rgb_unit_range_standardised():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 51, 102, 255         # B, G, R
    x = normalize(image, TORCHVISION)
    expected = [(255 / 255 - 0.485) / 0.229, (102 / 255 - 0.456) / 0.224, (51 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[:, 1, 2], expected, rtol=1e-5)


def test_prepare_image_resizes_bilinearly():
    # A horizontal ramp stays a ramp under bilinear upscaling: interior values between neighbours.
    image = np.repeat(np.repeat(np.array([[0, 100, 200]], np.uint8)[..., None], 3, 2), 2, 0)
    flat = InputConvention("BGR", 255.0, (0, 0, 0), (1, 1, 1))
    chw, s = prepare_image(image, flat, target_size=4, max_size=100)
    assert s == 2 and chw.shape == (3, 4, 6)
    row = chw[0, 0]
    assert np.all(np.diff(row) >= 0) and 0 < row[1] < 100 and 100 < row[3] < 200


@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2 ** 31 - 1))
def test_flip_twice_is_identity(h, w, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x1, y1 = rng.integers(0, w, 5), rng.integers(0, h, 5)
    boxes = np.stack([x1, y1, rng.integers(x1, w), rng.integers(y1, h)], 1).astype(np.float32)
    np.testing.assert_array_equal(flip_image(flip_image(image)), image)
    np.testing.assert_array_equal(flip_boxes(flip_boxes(boxes, w), w), boxes)


def test_flip_boxes_mirrors_pixel_inclusive_coordinates():
    # In a 10-wide image, columns 0..2 mirror to columns 7..9.
    boxes = np.array([[0, 1, 2, 5], [4, 0, 9, 3]], np.float32)
    np.testing.assert_array_equal(flip_boxes(boxes, 10), [[7, 1, 9, 5], [0, 0, 5, 3]])
    image = np.zeros((1, 10, 3), np.uint8)
    image[0, 0:3] = 255
    assert flip_image(image)[0, 7:10].min() == 255 and flip_image(image)[0, :7].max() == 0


def test_make_blob_pads_bottom_right_with_zeros():
    a = np.ones((3, 2, 4), np.float32)
    b = np.full((3, 5, 3), 2, np.float32)
    blob = make_blob([a, b])
    assert blob.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(blob[0, :, :2, :4], a)
    assert blob[0, :, 2:].max() == 0
    np.testing.assert_array_equal(blob[1, :, :5, :3], b)
    assert blob[1, :, :, 3:].max() == 0
