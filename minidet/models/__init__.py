"""Networks assembled from minidet.nn layers."""
from minidet.models.fast_rcnn import FastRCNN, fold_bbox_normalization
from minidet.models.vgg16 import VGG16

__all__ = ["FastRCNN", "VGG16", "fold_bbox_normalization"]
