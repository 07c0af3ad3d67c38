"""Everything between a folder of images and the model's input."""
from minidet.data.coco import COCODataset
from minidet.data.dataset import AnnotationError, DatasetSubset
from minidet.data.loader import BatchLoader
from minidet.data.proposals import load_mat_proposals, load_proposals, selective_search
from minidet.data.sampler import sample_rois
from minidet.data.synthetic import write_synthetic_voc
from minidet.data.voc import VOCDataset

__all__ = ["VOCDataset", "COCODataset", "DatasetSubset", "AnnotationError", "sample_rois", "selective_search",
           "write_synthetic_voc", "load_proposals", "load_mat_proposals", "BatchLoader"]
