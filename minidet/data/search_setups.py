"""Selective-search setups: which colour spaces, graph segmentations and similarity strategies to group with.

Uijlings et al. diversify selective search over colour spaces, initial segmentations and
similarity measures, and pool the regions of every combination; OpenCV's ximgproc implements the
grouping, and a SearchSetup names one such combination. MODES are the named ones that
minidet.data.proposals searches with; docs/PROPOSALS.md measures their recall and speed.
"""
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SearchSetup:
    """One selective-search setup (Uijlings et al.'s diversification, as OpenCV's ximgproc runs it).

    Every colour space x graph segmentation x strategy is one hierarchical grouping, and the regions
    of all of them are ranked together. spaces: from COLOUR_SPACES; ks: the k of each
    Felzenszwalb-Huttenlocher graph segmentation (smaller k, smaller initial regions), with Gaussian
    smoothing sigma and regions of at least min_region pixels; strategies: the similarity of each
    grouping, letters of c (colour), f (fill), t (texture), s (size), combined with equal weights.
    """
    spaces: tuple
    ks: tuple
    strategies: tuple
    sigma: float = 0.8
    min_region: int = 100

    def __post_init__(self):
        # Lists from a JSON cache key become tuples, so that equal setups compare and hash equal.
        for name in ("spaces", "ks", "strategies"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [s for s in self.spaces if s not in COLOUR_SPACES]
        bad = [s for s in self.strategies if not s or set(s) - set("cfts") or len(set(s)) != len(s)]
        if not self.spaces or not self.ks or not self.strategies or unknown or bad:
            raise ValueError(f"a SearchSetup needs colour spaces from {tuple(COLOUR_SPACES)}, k values and "
                             f"strategies of distinct letters c, f, t, s; got {self}")


COLOUR_SPACES = {
    "hsv": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV),
    "lab": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab),
    "gray": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
    "hue": lambda bgr: np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[:, :, 0]),
    "rgi": lambda bgr: cv2.merge([bgr[:, :, 2], bgr[:, :, 1], cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)]),
}

# The named setups. docs/PROPOSALS.md has their recall against boxes per image, and their speed.
#   fast:    Uijlings et al.'s fast mode, the paper's proposals (OpenCV's switchToSelectiveSearchFast):
#            HSV and Lab, k = 150, 300, 450, colour+fill+texture+size and fill+texture+size
#   quality: their quality mode: 5 colour spaces, k = 150..750, 4 strategies; slow. (OpenCV's
#            switchToSelectiveSearchQuality segments the blue channel in place of the hue: it splits the
#            image into the buffer of the hue image it has just added.)
#   single:  HSV, k = 200, colour+fill+texture+size (switchToSingleStrategy): the quickest
#   compact: HSV and Lab, k = 100, colour+fill+size and fill+size: no costly texture histograms;
#            tuned on the synthetic set, where it finds 0.997 of the objects (fast: 1.000) in a fifth
#            of the time
#   fine:    HSV, Lab and (R, G, intensity), k = 25, 50, 100, colour+fill+size and fill+size: finer
#            initial regions, for small and touching objects: on BCCD its first 2000 boxes find 0.97
#            or more of every class, where fast misses one red cell in six. It gives many boxes (4500 on
#            BCCD, 7000 on VOC images) and ranks large regions late, so where objects are large it
#            finds fewer of them within 2000 boxes than fast: minidet.data.recall.choose_mode picks
#            between the two by measuring
MODES = {
    "fast": SearchSetup(("hsv", "lab"), (150, 300, 450), ("cfts", "fts")),
    "quality": SearchSetup(("hsv", "lab", "gray", "hue", "rgi"), (150, 300, 450, 600, 750),
                           ("cfts", "fts", "f", "s")),
    "single": SearchSetup(("hsv",), (200,), ("cfts",)),
    "compact": SearchSetup(("hsv", "lab"), (100,), ("cfs", "fs")),
    "fine": SearchSetup(("hsv", "lab", "rgi"), (25, 50, 100), ("cfs", "fs")),
}


def search_setup(mode):
    """The SearchSetup of a mode name (a SearchSetup passes through)."""
    if isinstance(mode, SearchSetup):
        return mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)} or a SearchSetup, got {mode!r}")
    return MODES[mode]


def _strategy(letters):
    seg = cv2.ximgproc.segmentation
    make = {"c": seg.createSelectiveSearchSegmentationStrategyColor,
            "f": seg.createSelectiveSearchSegmentationStrategyFill,
            "t": seg.createSelectiveSearchSegmentationStrategyTexture,
            "s": seg.createSelectiveSearchSegmentationStrategySize}
    parts = [make[letter]() for letter in letters]   # fresh ones: a strategy keeps per-image state
    return parts[0] if len(parts) == 1 else seg.createSelectiveSearchSegmentationStrategyMultiple(*parts)


def configure(ss, image, setup):
    """Set a cv2 SelectiveSearchSegmentation up to search `image` (BGR, as searched) with `setup`."""
    seg = cv2.ximgproc.segmentation
    ss.clearImages()
    ss.clearGraphSegmentations()
    ss.clearStrategies()
    for space in setup.spaces:
        ss.addImage(COLOUR_SPACES[space](image))
    for k in setup.ks:
        ss.addGraphSegmentation(seg.createGraphSegmentation(setup.sigma, k, setup.min_region))
    for letters in setup.strategies:
        ss.addStrategy(_strategy(letters))
