"""Networks assembled from minidet.nn layers."""
from minidet.models.fast_rcnn import FastRCNN
from minidet.models.vgg16 import vgg16_trunk

__all__ = ["FastRCNN", "vgg16_trunk"]
