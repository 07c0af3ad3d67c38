import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI has 2 cores and a 10-minute budget for the whole suite: keep example counts modest.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("MINIDET_HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data():
    """../shared/data (real VOC-format images), or skip when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def make_tiny_voc(root, num_trainval=6, random_boxes=40, rounded=False):
    """(VOCDataset, proposals) of `num_trainval` 64x80 synthetic training images (one size: no padding
    in a batch); the proposals are jittered copies of the ground-truth boxes plus `random_boxes`
    random ones, so that tests need no selective search."""
    from minidet.data.synthetic import write_synthetic_voc
    from minidet.data.voc import VOCDataset

    root = write_synthetic_voc(root, num_trainval=num_trainval, num_test=2, image_size=(64, 80))
    dataset = VOCDataset(root, "trainval")
    rng = np.random.default_rng(0)
    proposals = []
    for i in range(len(dataset)):
        gt = dataset.annotation(i)["boxes"]
        jitter = np.repeat(gt, 8, axis=0) + rng.normal(0, 4, (8 * len(gt), 4))
        xy = rng.uniform(0, [60, 44], (random_boxes, 2))
        boxes = np.concatenate([jitter, np.concatenate([xy, xy + rng.uniform(8, 30, (random_boxes, 2))], axis=1)])
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, 79)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, 63)
        boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 2) & (boxes[:, 3] > boxes[:, 1] + 2)]
        proposals.append((np.round(boxes) if rounded else boxes).astype(np.float32))
    return dataset, proposals


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    """make_tiny_voc's six images, shared by the tests of one session."""
    return make_tiny_voc(tmp_path_factory.mktemp("data") / "synthetic")
