"""The Fast R-CNN network: a VGG16 trunk, RoI pooling, two fully connected layers, two heads.

    images (N, 3, H, W) -> trunk: conv1_1 .. relu5_3 (N, C5, H/16, W/16) -> roi_pool (R, C5, 7, 7)
      -> head: flatten (R, 49 C5), fc6, relu6, drop6, fc7, relu7, drop7 (R, D)
      -> cls_score (R, K+1) and bbox_pred (R, 4(K+1)), both reading fc7's output.

The backward runs the same parts in reverse, adding the two heads' input gradients (both read fc7's
output), down to the lowest trained layer and no further: layers below it are frozen and cost no
backward work at all, and the lowest trained layer itself computes no input gradient (Sequential
stops at the first layer that returns None). The paper trains conv3_1 and above.
"""
import numpy as np

from minidet.backend import asnumpy, get_array_module, to_device
from minidet.models.svd import compress_fast_rcnn
from minidet.models.vgg16 import FEATURE_STRIDE, VGG16_DEPTH, conv_names, vgg16_channels, vgg16_trunk
from minidet.nn.activation import ReLU
from minidet.nn.dropout import Dropout
from minidet.nn.layer import Sequential
from minidet.nn.linear import Linear
from minidet.nn.reshape import Flatten
from minidet.nn.roi_pool import RoIPool

POOLED_SIZE = (7, 7)
# The map RoIs are pooled from -> (stages of the trunk kept, its stride): the last convolution of
# stage 5 (VGG16's conv5_3, the paper's) or of stage 4 (conv4_3: twice as fine a grid, conv5 dropped).
ROI_LAYERS = {"conv5_3": (5, FEATURE_STRIDE), "conv4_3": (4, FEATURE_STRIDE // 2)}
CLS_SCORE_STD = 0.01    # the paper's initialisation of the new layers
BBOX_PRED_STD = 0.001


def make_roi_layer(op, spatial_scale):
    """RoI max pooling (the paper's) or RoIAlign (bilinear, sampling ratio 2, aligned), 7x7 outputs."""
    if op == "align":
        from minidet.nn.roi_align import RoIAlign

        return RoIAlign(output_size=POOLED_SIZE, spatial_scale=spatial_scale, sampling_ratio=2, aligned=True)
    return RoIPool(output_size=POOLED_SIZE, spatial_scale=spatial_scale)


class FastRCNN:
    """VGG16 Fast R-CNN with hand-written forward and backward. Not itself a Layer: it takes images and
    RoIs, and its backward takes the gradients of its two outputs.

    num_classes: K+1, background included (21 for VOC).
    width: multiplier of the trunk's channels (1.0: VGG16's 64 .. 512); fc_dim: width of fc6 and fc7.
    trainable_from: the lowest trained layer ("conv3_1" as in the paper; any conv name, "fc6",
        "fc7" or "cls_score"); every layer below it is frozen.
    dropout: probability of dropping a unit after fc6 and after fc7 (in training mode only).
    depth: convolutions per stage of the trunk ((2, 2, 3, 3, 3): VGG16's).
    dtype: float32, or float64 for gradient checks. seed: initialisation and dropout masks.
    roi_layer: "conv5_3" (the paper's, stride 16) or "conv4_3" (stride 8; conv5 is dropped and fc6
        reads 512 x 7 x 7 of conv4_3); for a trunk of one convolution a stage, the last one of stage 5 or 4.
    roi_op: "pool" (RoI max pooling, the paper's) or "align" (RoIAlign, bilinear).
    New layers start as the paper's: cls_score ~ N(0, 0.01^2), bbox_pred ~ N(0, 0.001^2), biases 0;
    the convolutions, fc6 and fc7 take He's N(0, sqrt(2 / fan_in)) until weights are loaded.
    A new network is in test mode: `train()` before training, `eval()` after.
    """

    def __init__(self, num_classes=21, width=1.0, fc_dim=4096, trainable_from="conv3_1",
                 dtype=np.float32, seed=0, dropout=0.5, depth=VGG16_DEPTH, roi_layer="conv5_3", roi_op="pool"):
        if roi_layer not in ROI_LAYERS:
            raise ValueError(f"roi_layer must be one of {sorted(ROI_LAYERS)}, got {roi_layer!r}")
        if roi_op not in ("pool", "align"):
            raise ValueError(f"roi_op must be 'pool' or 'align', got {roi_op!r}")
        rng = np.random.default_rng(seed)
        self.roi_layer, self.roi_op = roi_layer, roi_op
        self.num_classes, self.width, self.fc_dim = int(num_classes), float(width), int(fc_dim)
        self.dropout, self.dtype = float(dropout), np.dtype(dtype)
        self.depth = tuple(int(d) for d in depth)
        stages, stride = ROI_LAYERS[roi_layer]
        channels = vgg16_channels(width)[stages - 1]
        self.trunk = vgg16_trunk(width, dtype, rng, self.depth, stages)
        self.roi_pool = make_roi_layer(roi_op, 1.0 / stride)
        self.head = Sequential([
            ("flatten", Flatten()),
            ("fc6", Linear(channels * POOLED_SIZE[0] * POOLED_SIZE[1], fc_dim, dtype=dtype, rng=rng)),
            ("relu6", ReLU()),
            ("drop6", Dropout(dropout, seed=int(rng.integers(2 ** 31)))),
            ("fc7", Linear(fc_dim, fc_dim, dtype=dtype, rng=rng)),
            ("relu7", ReLU()),
            ("drop7", Dropout(dropout, seed=int(rng.integers(2 ** 31)))),
        ])
        self.cls_score = Linear(fc_dim, num_classes, dtype=dtype, rng=rng)
        self.bbox_pred = Linear(fc_dim, 4 * num_classes, dtype=dtype, rng=rng)
        for layer, std in ((self.cls_score, CLS_SCORE_STD), (self.bbox_pred, BBOX_PRED_STD)):
            layer.params["weight"][...] = rng.normal(0.0, std, layer.params["weight"].shape)
            layer.params["bias"][...] = 0
        self.set_trainable_from(trainable_from)
        self.eval()

    @classmethod
    def small(cls, num_classes=21, width=0.25, fc_dim=256, trainable_from="conv1_1",
              depth=(1, 1, 1, 1, 1), **kw):
        """The narrow preset that trains from scratch on a CPU: one convolution per stage with
        16, 32, 64, 128, 128 channels, fc6/fc7 of 256, every layer trained (a 5-convolution trunk
        learns much faster from scratch than VGG16's 13). Any argument may be overridden."""
        return cls(num_classes, width=width, fc_dim=fc_dim, trainable_from=trainable_from, depth=depth, **kw)

    @property
    def config(self):
        """The constructor arguments that rebuild this network's structure (for checkpoints)."""
        return {"num_classes": self.num_classes, "width": self.width, "fc_dim": self.fc_dim,
                "trainable_from": self.trainable_from, "dropout": self.dropout, "depth": list(self.depth),
                "roi_layer": self.roi_layer, "roi_op": self.roi_op}

    # -- forward and backward --------------------------------------------------------------

    def forward(self, images, rois):
        """images (N, 3, H, W), rois (R, 5) [batch index, x1, y1, x2, y2] in image pixels
        -> cls_score (R, K+1), bbox_pred (R, 4(K+1))."""
        features = self.trunk.forward(images)
        x = self.head.forward(self.roi_pool.forward(features, get_array_module(images).asarray(rois)))
        return self.cls_score.forward(x), self.bbox_pred.forward(x)

    def backward(self, dcls_score, dbbox_pred):
        """Fill every trained layer's grads from dL/dcls_score (R, K+1) and dL/dbbox_pred (R, 4(K+1))."""
        dx = self.cls_score.backward(dcls_score)
        dx_bbox = self.bbox_pred.backward(dbbox_pred)
        if dx is None:                  # only the heads are trained
            return
        dx += dx_bbox                   # both heads read fc7's output: their gradients add
        dx = self.head.backward(dx)
        if dx is not None:              # None: the lowest trained layer is in the head
            self.trunk.backward(self.roi_pool.backward(dx))

    def train(self, mode=True):
        """Training mode (dropout draws masks) when mode is True, test mode otherwise; returns self."""
        self.training = bool(mode)
        for part in (self.trunk, self.roi_pool, self.head, self.cls_score, self.bbox_pred):
            part.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- structure --------------------------------------------------------------------------

    def named_layers(self):
        """[(name, layer)] of the whole network in forward order, the two heads last."""
        return (self.trunk.named_layers() + [("roi_pool5", self.roi_pool)] + self.head.named_layers()
                + [("cls_score", self.cls_score), ("bbox_pred", self.bbox_pred)])

    def layer(self, name):
        """The layer called `name` ("conv3_1", "fc6", "cls_score", ...); KeyError if there is none."""
        for layer_name, layer in self.named_layers():
            if layer_name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {[n for n, _ in self.named_layers()]}")

    def replace_layer(self, name, new_layer):
        """Put new_layer in the place of the trunk's or the head's layer `name`, keeping the trained
        range and the mode."""
        part = self.trunk if name in [n for n, _ in self.trunk.layers] else self.head
        part[name] = new_layer
        new_layer.train(self.training)
        self.set_trainable_from(self.trainable_from)

    def set_trainable_from(self, name):
        """Train `name` and everything above it; freeze everything below.

        Layers below: frozen (no parameter gradients) and no input gradient, so the backward never
        reaches them. The lowest trained layer: parameter gradients, but no input gradient.
        """
        layers = self.named_layers()
        names = [n for n, _ in layers]
        trainable_names = conv_names(self.depth) + ("fc6", "fc7", "cls_score")
        if name not in trainable_names:
            raise ValueError(f"trainable_from must be one of {trainable_names}, got {name!r}")
        self.trainable_from = name
        self.lowest_trained = names.index(name)
        heads_start = names.index("cls_score")
        for index, (_, layer) in enumerate(layers):
            if not layer.params:        # ReLU, pools, dropout, reshape: nothing to train, and below the
                layer.needs_input_grad = index > self.lowest_trained   # lowest trained one no backward comes
                continue
            layer.frozen = index < self.lowest_trained
            # the heads both read fc7: when they are the lowest trained layers, neither needs dx
            lowest = index == self.lowest_trained or (index >= heads_start and self.lowest_trained >= heads_start)
            layer.needs_input_grad = not (layer.frozen or lowest)
            if layer.frozen:
                layer.grads = {}

    def trainable_layers(self):
        """[(name, layer)] of the trained layers that have parameters, in forward order."""
        return [(n, layer) for i, (n, layer) in enumerate(self.named_layers())
                if i >= self.lowest_trained and layer.params]

    def grads(self):
        """{"conv3_1.weight": gradient, ...} of the trained parameters, after backward."""
        return {f"{name}.{key}": grad for name, layer in self.trainable_layers()
                for key, grad in layer.grads.items()}

    def trainable_params(self):
        """{"conv3_1.weight": array, ...}: the trained parameters themselves (updated in place)."""
        return {f"{name}.{key}": value for name, layer in self.trainable_layers()
                for key, value in layer.params.items()}

    # -- parameters --------------------------------------------------------------------------

    def params(self):
        """{"conv1_1.weight": array, ...} of every parameter, the arrays themselves, in layer order."""
        return {f"{name}.{key}": value for name, layer in self.named_layers()
                for key, value in layer.params.items()}

    def state_dict(self):
        """{"conv1_1.weight": numpy array, ..., "bbox_pred.bias": ...}: copies, on the CPU."""
        return {name: np.array(asnumpy(value)) for name, value in self.params().items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters (in place, cast to the model's dtype and device).

        strict=True: the keys must be exactly the model's. strict=False: parameters missing from
        state_dict keep their current values (e.g. ImageNet weights hold no cls_score/bbox_pred).
        Keys the model lacks and arrays of the wrong shape are errors either way; the error names
        every such key. Returns the sorted names of the parameters left as they were.
        """
        params = self.params()
        missing = sorted(k for k in params if k not in state_dict)
        extra = sorted(k for k in state_dict if k not in params)
        wrong = sorted(f"{k}: {tuple(np.shape(state_dict[k]))} given, {tuple(params[k].shape)} expected"
                       for k in params if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(params[k].shape))
        problems = []
        if missing and strict:
            problems.append(f"missing keys: {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected keys: {', '.join(extra)}")
        if wrong:
            problems.append(f"wrong shapes: {'; '.join(wrong)}")
        if problems:
            raise KeyError("state dict does not fit this FastRCNN ("
                           f"num_classes={self.num_classes}, width={self.width:g}, fc_dim={self.fc_dim}): "
                           + " | ".join(problems))
        for name, value in state_dict.items():
            target = params[name]
            target[...] = get_array_module(target).asarray(value, dtype=target.dtype)
        return missing

    def to(self, device):
        """Move every parameter to 'cpu' (numpy) or 'gpu' (cupy); returns self."""
        for _, layer in self.named_layers():
            for key, value in layer.params.items():
                layer.params[key] = to_device(value, device)
            layer.grads = {}
        return self

    # -- inference ---------------------------------------------------------------------------

    def compress(self, fc6_rank=1024, fc7_rank=256, images=None, rois=None, repeat=3):
        """Truncated SVD of fc6 and fc7 (paper 3.1); a report dict. See minidet.models.svd."""
        return compress_fast_rcnn(self, fc6_rank, fc7_rank, images, rois, repeat)


def unique_pooled_rois(rois, roi_layer, dtype=np.float32):
    """Indices of the distinct RoIs as the RoI layer sees them, and each RoI's representative.

    Two RoIs are the same when roi_layer.input_keys gives them equal rows (for RoI pooling: the same
    rounded cells of the same image). rois (R, 5) -> unique (U,) indices (the first RoI of each
    group), inverse (R,) into them.
    """
    xp = get_array_module(rois)
    keys = roi_layer.input_keys(rois, dtype)
    order = xp.lexsort(keys.T[::-1])                 # stable: equal rows keep their order
    ordered = keys[order]
    first = xp.concatenate([xp.ones(1, dtype=bool), (ordered[1:] != ordered[:-1]).any(axis=1)])
    inverse = xp.empty(len(keys), dtype=xp.int64)
    inverse[order] = xp.cumsum(first) - 1
    return order[first], inverse
