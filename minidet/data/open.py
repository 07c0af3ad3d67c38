"""Opening a data set from settings: a VOC-layout folder, a COCO-layout folder, or a COCO file and its images.

    data_dir=DIR with DIR/ImageSets/Main/SPLIT.txt            -> VOCDataset(DIR, SPLIT)
    data_dir=DIR with DIR/annotations/instances_SPLIT.json,
        its images in DIR/SPLIT/ or else DIR/images/          -> COCODataset (the split's file and folder)
    coco_json=FILE, images=IMAGES                              -> COCODataset(FILE, IMAGES)

class_names choose the labels: a VOC folder takes them when it has no classes.txt, a COCO file's
categories are matched to them by name (so a model's labels find their categories in any file).

A run records its data in its config (TrainConfig data_dir, or coco_json and images, and
test_coco_json and test_images); evaluation_source and recorded_source read them back, for the
evaluation after training and for evaluating a saved model later.
"""
import os
import re

from minidet.data.coco import COCODataset
from minidet.data.voc import VOCDataset

NO_DATA = "no data set: give --data-dir, or --coco-json with --images"
DATA_SETTINGS = ("data_dir", "coco_json", "images", "test_coco_json", "test_images")   # TrainConfig's fields


def check_source(data_dir=None, coco_json=None, images=None):
    """ValueError unless the settings name one data set: a folder, or a COCO file and its image folder."""
    if data_dir is not None and coco_json is not None:
        raise ValueError(f"a data set is a folder ({data_dir}) or a COCO file ({coco_json}), not both: "
                         f"give --data-dir or --coco-json")
    if images is not None and coco_json is None:
        raise ValueError(f"--images ({images}) is the image folder of a COCO file: give --coco-json too")
    if coco_json is not None and images is None:
        raise ValueError(f"--coco-json {coco_json} needs --images, the folder its file_name entries are relative to")
    if data_dir is None and coco_json is None:
        raise ValueError(NO_DATA)


def coco_layout(data_dir, split):
    """(instances file, image folder) of a split of a COCO-layout folder; None when DATA_DIR has no
    annotations/ folder; FileNotFoundError naming what is missing when it has one."""
    annotations = os.path.join(data_dir, "annotations")
    if not os.path.isdir(annotations):
        return None
    path = os.path.join(annotations, f"instances_{split}.json")
    if not os.path.isfile(path):
        found = sorted(f for f in os.listdir(annotations) if re.fullmatch(r"instances_.+\.json", f))
        raise FileNotFoundError(f"{path}: no such file, for split {split!r} ({annotations} holds "
                                f"{', '.join(found) or 'no instances_SPLIT.json'})")
    for folder in (os.path.join(data_dir, split), os.path.join(data_dir, "images")):
        if os.path.isdir(folder):
            return path, folder
    raise FileNotFoundError(f"{data_dir}: no image folder for {path} ({split}/ or images/)")


def open_dataset(data_dir=None, split="trainval", class_names=None, coco_json=None, images=None):
    """The data set the settings name (module docstring): a VOCDataset or a COCODataset.

    split: the VOC split file or the COCO-layout instances file to read (a COCO file is its own split).
    Errors name the path: FileNotFoundError for what is missing, ValueError for settings that name
    no data set or two.
    """
    check_source(data_dir, coco_json, images)
    if coco_json is not None:
        if not os.path.isdir(images):
            raise FileNotFoundError(f"{images}: no such folder (the images of {coco_json})")
        return COCODataset(coco_json, images, class_names)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such folder")
    if os.path.isdir(os.path.join(data_dir, "ImageSets")):
        return VOCDataset(data_dir, split, class_names)
    found = coco_layout(data_dir, split)
    if found is None:
        raise FileNotFoundError(f"{data_dir}: neither a VOC-layout folder (ImageSets/Main/{split}.txt) nor a "
                                f"COCO-layout one (annotations/instances_{split}.json)")
    return COCODataset(*found, class_names)


def data_home(data_dir=None, coco_json=None):
    """The folder whose caches serve a data set (minidet.data.proposals.proposals_cache_dir): the data
    folder, else the COCO file's folder."""
    return data_dir if data_dir is not None else os.path.dirname(os.path.abspath(coco_json))


def describe_source(data_dir=None, coco_json=None, images=None):
    """The data a source names, for messages: DIR, or FILE (images in IMAGES)."""
    return data_dir if data_dir is not None else f"{coco_json} (images in {images})"


def split_name(data_dir=None, coco_json=None, images=None):
    """The name of a source's default evaluation split: test for a folder; a COCO file's stem without
    'instances_' (instances_val2017.json -> val2017), which names the evaluation's output files."""
    if data_dir is not None or coco_json is None:
        return "test"
    return re.sub(r"^instances_", "", os.path.splitext(os.path.basename(coco_json))[0])


def evaluation_source(config):
    """open_dataset's source (data_dir, or coco_json and images) of a run's test set, from its config
    (a dict, as TrainConfig.to_dict gives): test_coco_json with test_images (default: the training
    images' folder), else the data folder (its test split). ValueError when the config names none."""
    if config.get("test_images") and not config.get("test_coco_json"):
        raise ValueError(f"--test-images ({config['test_images']}) is the image folder of --test-coco-json: "
                         f"give --test-coco-json too")
    if config.get("test_coco_json"):
        return dict(coco_json=config["test_coco_json"], images=config.get("test_images") or config.get("images"))
    if config.get("data_dir"):
        return dict(data_dir=config["data_dir"])
    raise ValueError(f"no test set for a run on {config.get('coco_json')}: give --test-coco-json FILE "
                     f"(and --test-images DIR when its images are not in --images)")


def recorded_source(config, split=None):
    """(source, split) of a split of the data a run's config records, or None when they are not here.

    A data folder serves any split (default test). A run on COCO files records two: its test file
    (split test, the default) and its training file (split config["split"]); another split is a
    ValueError.
    """
    if config.get("data_dir"):
        source, split = dict(data_dir=config["data_dir"]), split or "test"
    elif not config.get("coco_json"):
        return None
    elif split in (None, "test"):
        if not config.get("test_coco_json"):
            return None
        source, split = evaluation_source(config), "test"
    elif split == config.get("split"):
        source = dict(coco_json=config["coco_json"], images=config.get("images"))
    else:
        raise ValueError(f"the model was trained on COCO files, which give the splits test and "
                         f"{config.get('split')}, not {split!r}; pass --coco-json and --images")
    here = all(os.path.exists(p) for p in source.values() if p is not None)
    return (source, split) if here else None
