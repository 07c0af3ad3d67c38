"""What every detection data set shares: its error type, reading and checking its images, indexing, subsets.

A data set (VOCDataset, COCODataset, DatasetSubset) offers ids, class_names, len, image_path(i),
image_size(i) (H, W), annotation(i, as_written=False), load_image(i) (H, W, 3) uint8 BGR and ds[i]
(the annotation with its image). ImageDataset writes down the part that does not depend on the file
format; a format says where its images are and where their sizes come from.
"""
import os

import cv2
import numpy as np


class AnnotationError(ValueError):
    """An annotation that cannot be used; the message names the file and the problem.

    Missing files raise FileNotFoundError, with the same kind of message.
    """


def read_image(path, size, size_from):
    """The image at `path`, (H, W, 3) uint8 BGR, checked to be size (H, W) as `size_from` (a file,
    for the message) gives it; AnnotationError naming the file when it cannot be read or differs."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise AnnotationError(f"{path}: image file is missing or cannot be decoded")
    if image.shape[:2] != tuple(size):
        raise AnnotationError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but "
                              f"{size_from} says {size[1]}x{size[0]}")
    return image


class ImageDataset:
    """The part of a detection data set that does not depend on its file format.

    A subclass sets ids and class_names and defines image_path(i), image_size(i),
    annotation(i, as_written=False), listed_in(i) and size_from(i) (where image i is named and where
    its size is written, for messages).
    """

    @property
    def num_classes(self):
        """K + 1: the classes and the background."""
        return len(self.class_names) + 1

    def __len__(self):
        return len(self.ids)

    def require_image_files(self):
        """FileNotFoundError naming the first image file that does not exist and where it is listed."""
        for i in range(len(self)):
            if not os.path.isfile(self.image_path(i)):
                raise FileNotFoundError(f"{self.image_path(i)}: image file is missing ({self.listed_in(i)})")

    def load_image(self, i):
        """(H, W, 3) uint8 BGR, checked against the size in the annotation."""
        return read_image(self.image_path(i), self.image_size(i), self.size_from(i))

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i = i % len(self)
        example = self.annotation(i)
        example["image"] = self.load_image(i)
        return example


class DatasetSubset:
    """The images `indices` of a data set, as a data set of their own (index k is dataset index indices[k]).

    Offers what proposals, the batch loader, detection and evaluation read: ids, class_names, root,
    len, image_path, image_size, annotation, load_image and [k].
    """

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.ids = [dataset.ids[i] for i in self.indices]
        self.class_names = dataset.class_names
        self.root = getattr(dataset, "root", None)

    @classmethod
    def spread(cls, dataset, n):
        """n images evenly spread over the data set (a folder may be sorted by source, date or class)."""
        return cls(dataset, np.unique(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)))

    def __len__(self):
        return len(self.indices)

    def image_path(self, k):
        return self.dataset.image_path(self.indices[k])

    def image_size(self, k):
        return self.dataset.image_size(self.indices[k])

    def annotation(self, k, as_written=False):
        return self.dataset.annotation(self.indices[k], as_written=as_written)

    def load_image(self, k):
        return self.dataset.load_image(self.indices[k])

    def __getitem__(self, k):
        return self.dataset[self.indices[k]]

    def __repr__(self):
        return f"DatasetSubset({self.dataset!r}, {len(self)} images)"
