"""A training run's settings: one dataclass, saved in every checkpoint and in OUT/config.json, and the
command-line options that set each of its fields (`--field-name VALUE`), generated from it."""
import dataclasses
import json
from dataclasses import dataclass, field

from minidet.arguments import parse_bool, parse_classes, parse_scales


@dataclass
class TrainConfig:
    """Everything a run depends on.

    The defaults are the paper's (VGG16 from ImageNet weights, SPEC.md "Training"):
    lr 0.001, momentum 0.9, decay 0.0005, x0.1 after 30k of 40k iterations, N=2, R=128, scale 600.
    """
    data_dir: str = None                     # a VOC- or COCO-layout folder (minidet.data.open) ...
    coco_json: str = None                    # ... or the training split's COCO file, with its image folder:
    images: str = None
    test_coco_json: str = None               # what examples/train_voc.py evaluates on after training
    test_images: str = None                  # (default: the data folder's test split; test_images: images)
    out: str = "runs/train"
    split: str = "trainval"
    preset: str = "vgg16"                    # "vgg16" (the paper's model) or "small" (narrow, from scratch)
    weights: str = None                      # converted ImageNet weights (.npz) or a minidet model
    device: str = "cpu"                      # "cpu" or "gpu"
    iters: int = 40000
    lr: float = 0.001
    new_layer_lr_mult: float = 1.0           # the rate of the layers that --weights does not hold, x lr
    momentum: float = 0.9
    weight_decay: float = 0.0005
    step_size: int = 30000                   # lr x gamma every step_size iterations (0: never)
    gamma: float = 0.1
    warmup_iters: int = 0                    # linear warmup from warmup_factor x lr
    warmup_factor: float = 0.1
    images_per_batch: int = 2
    rois_per_image: int = 64
    fg_fraction: float = 0.25                # share of foreground RoIs, at most
    scales: tuple = (600,)                   # shorter side; one drawn per image
    max_size: int = 1000
    test_scale: int = None                   # recorded in final.npz; default: the single scale, else 600
    test_nms: float = 0.3                    # per-class NMS IoU threshold at test time, recorded in final.npz
    test_max_per_image: int = 100            # detections kept per image at test time, recorded in final.npz
    flip: bool = True
    use_difficult: bool = False
    class_names: tuple = None                # when the folder has no classes.txt
    proposals_dir: str = None                # default: minidet.data.proposals.proposals_cache_dir
    proposal_mode: str = "auto"              # selective search setup (minidet.data.proposals.MODES), or
                                             # "auto": chosen by recall on 24 training images (fast or fine)
    proposals_file: str = None               # the training split's proposals from another tool (.npz/.mat/.pkl)
    proposals_layout: str = None             # how that file writes boxes (minidet.data.external_proposals)
    test_proposals_file: str = None          # the same for the test split that train_voc.py evaluates on
    proposal_workers: int = 2
    checkpoint_every: int = 5000
    seed: int = 0
    distributed: bool = False                # one rank of an MPI job (minidet.distributed, docs/DISTRIBUTED.md)
    allreduce: str = "auto"                  # "auto" (NCCL on the GPU, MPI on the CPU), "mpi" or "nccl"
    scale_lr: bool = False                   # Goyal et al.'s linear rule: lr x W, iterations / W, warmup
    resume: bool = False
    progress: bool = True
    model_kwargs: dict = field(default_factory=dict)   # extra FastRCNN / FastRCNN.small arguments

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d):
        """A TrainConfig from to_dict's output (OUT/config.json); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(names)}")
        d = dict(d)
        if d.get("scales") is not None:
            d["scales"] = tuple(d["scales"])
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


_PARSERS = {"scales": parse_scales, "class_names": parse_classes, "model_kwargs": json.loads}
_ALIASES = {"class_names": ("--classes",)}
_HELP = {
    "class_names": "a,b,c",
    "scales": "comma-separated",
    "model_kwargs": "JSON, merged into the preset's, e.g. '{\"roi_op\": \"align\"}'",
    "data_dir": "a VOC- or COCO-layout folder",
    "coco_json": "the training split's COCO file, instead of --data-dir",
    "images": "the folder of --coco-json's images",
    "test_coco_json": "the COCO file to evaluate on after training",
    "test_images": "its image folder (None: --images)",
    "new_layer_lr_mult": ("multiplies the rate of the trained layers that --weights does not hold "
                          "(a conv-only VGG16's fc6, fc7 and heads)"),
    "proposal_mode": ("a selective-search mode (fast, quality, single, compact, fine), or auto: the one "
                      "that finds the objects of 24 training images best (docs/PROPOSALS.md)"),
    "proposals_file": ("the training split's proposals from another tool: .npz, .pkl or .mat, one (P, 4) "
                       "array per image id"),
    "proposals_layout": ("how that file writes boxes: xyxy0, xyxy1 or ss_original "
                         "(None: ss_original for .mat, else xyxy0)"),
    "test_proposals_file": "the same for the test split evaluated after training",
    "proposals_dir": ("the proposal cache (None: DATA_DIR/proposals_cache, or beside the run when the "
                      "data folder is read-only)"),
}


def add_config_arguments(parser, skip=()):
    """One option per TrainConfig field (--iters, --rois-per-image, --class-names a,b,c, --flip false,
    --model-kwargs JSON, ...), each defaulting to None so that a caller can tell what was given."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = _PARSERS.get(f.name) or {bool: parse_bool, int: int, float: float}.get(type(default), str)
        flag = dict(nargs="?", const=True) if kind is parse_bool else {}      # "--resume" alone means true
        parser.add_argument("--" + f.name.replace("_", "-"), *_ALIASES.get(f.name, ()), type=kind, dest=f.name,
                            **flag, default=None, metavar=f.name.upper(),
                            help=f"{_HELP.get(f.name, '')} (default {default})".strip())


def given_settings(args):
    """{field: value} of the TrainConfig options given on the command line (parsed by add_config_arguments)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
