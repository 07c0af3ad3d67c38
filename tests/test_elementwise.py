"""minidet.ops.elementwise on the CPU: against the layers' formulas and a plain-Python hash."""
import numpy as np
import pytest

from minidet.ops.elementwise import (bias_relu, dropout, dropout_backward, dropout_keep, dropout_keys, relu,
                                     relu_backward)


def fmix32(h):
    """MurmurHash3's finaliser on a Python int, written out."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_relu_and_its_backward_are_the_layer_formulas_in_one_pass():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[0, 0, :2] = [0.0, np.nan]
    y = relu(x)
    np.testing.assert_array_equal(y, x * (x > 0))            # NaN stays NaN, negatives give 0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(relu_backward(y, dy), dy * (x > 0))
    out = x.copy()
    assert relu(out, out=out) is out and np.array_equal(out, y, equal_nan=True)


def test_bias_relu_adds_the_bias_then_rectifies():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5))
    b = rng.standard_normal((3, 1, 1))
    np.testing.assert_array_equal(bias_relu(x, b), np.maximum(x + b, 0))


def test_dropout_keep_is_the_hash_of_seed_draw_and_index():
    k0, k1, threshold = dropout_keys(0.5, seed=7, draw=3)
    keep = dropout_keep((40,), 0.5, seed=7, draw=3)
    expected = [fmix32((fmix32(i ^ int(k0)) + int(k1)) & 0xFFFFFFFF) >= int(threshold) for i in range(40)]
    np.testing.assert_array_equal(keep, expected)
    assert threshold == 2**31
    assert dropout_keys(0.0, 7, 3)[2] == 0 and dropout_keep((100,), 0.0, 7, 3).all()
    with pytest.raises(ValueError, match="probability"):
        dropout_keys(1.0, 7, 3)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_1_minus_p_without_structure_and_scales_the_kept(p):
    x = np.ones((1000, 1000), np.float32)
    y = dropout(x, p, seed=0, draw=0)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.005
    np.testing.assert_array_equal(y[kept], np.float32(1) / np.float32(1 - p))
    assert np.abs(kept.mean(axis=0) - (1 - p)).max() < 0.08
    assert np.abs(kept.mean(axis=1) - (1 - p)).max() < 0.08
    # neighbours are independent: P(both kept) = (1 - p)^2 along rows and columns
    assert abs((kept[:, 1:] & kept[:, :-1]).mean() - (1 - p) ** 2) < 0.005
    assert abs((kept[1:] & kept[:-1]).mean() - (1 - p) ** 2) < 0.005


def test_dropout_masks_differ_by_draw_and_seed_and_the_backward_uses_the_forwards():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    masks = [dropout_keep(x.shape, 0.5, seed, draw) for seed, draw in ((0, 0), (0, 1), (1, 0))]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(dropout(x, 0.5, 0, 0), np.where(masks[0], x * np.float32(2), 0))
    np.testing.assert_array_equal(dropout_backward(dy, 0.5, 0, 0), np.where(masks[0], dy * np.float32(2), 0))
