"""The input convention a set of weights expects: channel order, value range, normalisation.

Weights converted from different sources were trained on differently prepared
pixels. A weights file records its convention and the data pipeline follows it,
so that every network sees inputs prepared the way it was trained:

    x = (image_in_channel_order / 255 * pixel_range - mean) / std      (per channel)
"""
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class InputConvention:
    channel_order: str       # "BGR" or "RGB": order of the 3 input channels
    pixel_range: float       # 255.0 for 0..255 inputs, 1.0 for 0..1 inputs
    mean: tuple              # per channel, in channel_order, in pixel_range units
    std: tuple               # per channel, in channel_order, in pixel_range units

    def __post_init__(self):
        if self.channel_order not in ("BGR", "RGB"):
            raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per channel (3)")

    def to_dict(self):
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(str(d["channel_order"]), float(d["pixel_range"]),
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


# BGR, 0..255, minus the VOC/ImageNet pixel means: the convention of the paper's VGG16.
CAFFE = InputConvention("BGR", 255.0, (102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0))

# RGB, 0..1, normalised by ImageNet statistics: torchvision's VGG16 checkpoints.
TORCHVISION = InputConvention("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# A network trained from scratch sees pixels of unit scale: BGR minus the means, divided by the
# ImageNet standard deviations (0.225, 0.224, 0.229 in 0..1 units, BGR order). Caffe's convention
# (no division) feeds values of +-100 into He-initialised layers, whose activations then start
# ~50x too large and the untrained network collapses onto the background class.
SCRATCH = InputConvention("BGR", 255.0, CAFFE.mean, (57.375, 57.12, 58.395))
