"""VGG16's convolutional trunk (Simonyan & Zisserman 2015, configuration D), as Fast R-CNN uses it.

    conv1_1 conv1_2 pool1 | conv2_1 conv2_2 pool2 | conv3_1 conv3_2 conv3_3 pool3 |
    conv4_1 conv4_2 conv4_3 pool4 | conv5_1 conv5_2 conv5_3            (each conv: 3x3, pad 1, + ReLU)

pool5 is left out: Fast R-CNN puts RoI pooling in its place. The four max-pools are 2x2, stride 2,
and round their output size up as Caffe's do (out = ceil((in - 2) / 2) + 1), so a 600x1000 image
gives a 38x63 conv5_3 map, stride 16. `width` scales every layer's channels (64, 128, 256, 512, 512
at width 1) for the narrow networks that train from scratch on a CPU, and `depth` the number of
convolutions of each stage ((2, 2, 3, 3, 3) for VGG16; the small preset keeps one per stage, since a
plain 13-layer stack without pretrained weights learns far more slowly than a 5-layer one).
"""
import numpy as np

from minidet.nn.activation import ReLU
from minidet.nn.conv import Conv2d
from minidet.nn.layer import Sequential
from minidet.nn.pool import MaxPool2d

# (channels at width 1, number of 3x3 convolutions) of the five stages
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_DEPTH = tuple(count for _, count in VGG16_STAGES)
FEATURE_STRIDE = 16


def vgg16_channels(width=1.0):
    """Channels of the five stages at this width: (64, 128, 256, 512, 512) x width, rounded, >= 1."""
    return tuple(max(1, int(round(channels * width))) for channels, _ in VGG16_STAGES)


def conv_names(depth=VGG16_DEPTH):
    """("conv1_1", "conv1_2", "conv2_1", ..., "conv5_3"): Caffe's names, in order, for
    `depth` convolutions per stage."""
    return tuple(f"conv{stage}_{i}" for stage, count in enumerate(depth, 1) for i in range(1, count + 1))


def conv_output_size(size):
    """conv5_3's (H, W) for an input of `size` (H, W): four Caffe pools, out = ceil((in - 2) / 2) + 1."""
    h, w = size
    for _ in range(4):
        h, w = -(-(h - 2) // 2) + 1, -(-(w - 2) // 2) + 1
    return h, w


def vgg16_trunk(width=1.0, dtype=np.float32, rng=None, depth=VGG16_DEPTH, stages=5):
    """The trunk as one layer: images (N, 3, H, W) -> conv5_3 features after ReLU (N, C5, H', W'),
    H' x W' = conv_output_size((H, W)), C5 = 512 x width. Its layers, in order: conv1_1, relu1_1,
    conv1_2, relu1_2, pool1, ..., relu5_3. stages=4 stops at relu4_3 (stride 8, no pool4).

    The convolutions take the default He initialisation, N(0, sqrt(2 / fan_in)), bias 0, from rng.
    """
    rng = np.random.default_rng(rng)
    layers = []
    in_channels = 3
    if len(depth) != len(VGG16_STAGES) or min(depth) < 1:
        raise ValueError(f"depth needs a count >= 1 for each of the {len(VGG16_STAGES)} stages, got {depth!r}")
    for stage, (channels, count) in enumerate(zip(vgg16_channels(width)[:stages], depth), 1):
        for i in range(1, count + 1):
            layers.append((f"conv{stage}_{i}", Conv2d(in_channels, channels, 3, stride=1, padding=1,
                                                      dtype=dtype, rng=rng)))
            layers.append((f"relu{stage}_{i}", ReLU(inplace=True)))   # over the convolution's own output
            in_channels = channels
        if stage < stages:
            layers.append((f"pool{stage}", MaxPool2d(2, stride=2, ceil_mode=True)))
    return Sequential(layers)
