"""minidet.weights: torch checkpoints read without torch, VGG16 name mapping, minidet's .npz."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minidet.convention import CAFFE, TORCHVISION
from minidet.weights import (CONVENTION_KEY, WeightsError, load_weights, main, read_torch_checkpoint,
                             save_weights, torchvision_vgg16_names)
from tests.reference import require_torch, require_torchvision, to_numpy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def torchvision_style_vgg16(width=1 / 16, fc_dim=64):
    """A torch module with exactly torchvision vgg16()'s keys (features.N, classifier.N), its
    channels scaled by `width` so that the test stays small."""
    torch = require_torch()
    torchvision = require_torchvision()
    nn = torch.nn
    cfg = [v if v == "M" else max(1, round(v * width)) for v in VGG16_CFG]
    channels = cfg[-2]

    class ScaledVGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torchvision.models.vgg.make_layers(cfg, batch_norm=False)
            self.classifier = nn.Sequential(
                nn.Linear(channels * 49, fc_dim), nn.ReLU(True), nn.Dropout(),
                nn.Linear(fc_dim, fc_dim), nn.ReLU(True), nn.Dropout(), nn.Linear(fc_dim, 1000))

    torch.manual_seed(0)
    return ScaledVGG()


def save_torch(obj, path, legacy):
    torch = require_torch()
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


def convert_without_torch(src, dst):
    """Run `minidet convert-weights` in a fresh interpreter where importing torch fails."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "from minidet.weights import main\n"
            f"code = main([{str(src)!r}, {str(dst)!r}])\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


class OldTensor:
    """Pickles a tensor as torch 0.1-0.3 did, torchvision's 2017 files among them:
    torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        torch = require_torch()
        t = self.tensor
        return (torch._utils._rebuild_tensor, (t.storage(), t.storage_offset(), tuple(t.size()), t.stride()))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_torch_tensor_layouts_are_read_exactly(tmp_path, legacy):
    torch = require_torch()
    torch.manual_seed(0)
    saved = {
        "contiguous": torch.randn(3, 4),
        "transposed": torch.randn(5, 6).t(),            # strides (1, 6)
        "offset_view": torch.randn(10)[2:7],           # storage offset 2
        "shared_storage": torch.arange(12.0).reshape(3, 4)[:, 1],
        "float64": torch.randn(4, dtype=torch.float64),
        "float16": torch.randn(4).half(),
        "bfloat16": torch.randn(4).bfloat16(),
        "int64": torch.arange(5),
        "parameter": torch.nn.Parameter(torch.randn(2, 2)),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5),
    }
    path = save_torch(saved | {"torch_0_x": OldTensor(saved["transposed"])}, tmp_path / "t.pth", legacy)
    out = read_torch_checkpoint(path)
    np.testing.assert_array_equal(out.pop("torch_0_x"), to_numpy(saved["transposed"]))
    assert list(out) == list(saved)
    for key, tensor in saved.items():
        expected = to_numpy(tensor.float() if tensor.dtype == torch.bfloat16 else tensor)
        assert out[key].dtype == expected.dtype, key
        assert out[key].shape == expected.shape, key
        np.testing.assert_array_equal(out[key], expected, err_msg=key)
        assert out[key].flags.c_contiguous and out[key].flags.writeable


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torchvision_vgg16_converts_without_torch_and_gives_torch_features(tmp_path, legacy):
    torch = require_torch()
    net = torchvision_style_vgg16().double().eval()
    src = save_torch(net.state_dict(), tmp_path / "vgg.pth", legacy)
    dst = tmp_path / "vgg.npz"
    assert "wrote" in convert_without_torch(src, dst)

    state_dict, convention = load_weights(dst)
    assert convention == TORCHVISION
    expected = {minidet: to_numpy(net.state_dict()[tv]) for tv, minidet in torchvision_vgg16_names().items()}
    assert sorted(state_dict) == sorted(expected)      # classifier.6 (ImageNet's head) dropped
    for key in expected:
        np.testing.assert_array_equal(state_dict[key], expected[key], err_msg=key)

    from minidet.models.vgg16 import vgg16_trunk  # the backbone with the converted weights
    backbone = vgg16_trunk(width=1 / 16, dtype=np.float64)
    for name, layer in backbone.named_layers():
        for key in layer.params:
            layer.params[key][...] = state_dict[f"{name}.{key}"]
    # 64x96: every pool input is even, where torchvision's floor pools and Caffe's ceil pools agree
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96))
    with torch.no_grad():
        reference = net.features[:30](torch.from_numpy(x))   # up to relu5_3, without pool5
    np.testing.assert_allclose(backbone.forward(x), to_numpy(reference), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_real_size_torchvision_vgg16_converts(tmp_path):
    torch = require_torch()
    torchvision = require_torchvision()
    torch.manual_seed(0)
    net = torchvision.models.vgg16(weights=None).eval()
    # the legacy format, as torchvision's vgg16-397923af.pth is stored
    src = save_torch(net.state_dict(), tmp_path / "vgg16.pth", legacy=True)
    dst = tmp_path / "vgg16.npz"
    convert_without_torch(src, dst)
    state_dict, convention = load_weights(dst)
    assert convention == TORCHVISION
    assert state_dict["fc6.weight"].shape == (4096, 25088) and state_dict["fc7.weight"].shape == (4096, 4096)
    np.testing.assert_array_equal(state_dict["fc6.weight"], to_numpy(net.classifier[0].weight))
    np.testing.assert_array_equal(state_dict["conv5_3.bias"], to_numpy(net.features[28].bias))
    del net


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoint_is_reported_with_its_name(tmp_path, legacy):
    src = save_torch(torchvision_style_vgg16().state_dict(), tmp_path / "vgg.pth", legacy)
    data = open(src, "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match="truncated") as err:
        load_weights(cut)
    assert str(cut) in str(err.value)


def test_wrong_shaped_tensor_is_named(tmp_path):
    torch = require_torch()
    state = torchvision_style_vgg16().state_dict()
    state["features.12.weight"] = torch.zeros(16, 8, 3, 3)   # conv3_2 expects 16 inputs from conv3_1
    src = save_torch(state, tmp_path / "vgg.pth", legacy=False)
    with pytest.raises(WeightsError, match=r"features\.12\.weight \(conv3_2\.weight\).*\(16, 8, 3, 3\)") as err:
        load_weights(src)
    assert str(src) in str(err.value)


def test_non_vgg_checkpoint_is_refused_with_its_keys(tmp_path):
    torchvision = require_torchvision()
    src = save_torch(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth", legacy=False)
    with pytest.raises(WeightsError, match="not a torchvision VGG16 checkpoint") as err:
        load_weights(src)
    assert "conv1.weight" in str(err.value) and "features.0.weight" in str(err.value)


def test_batch_norm_vgg_is_refused(tmp_path):
    torchvision = require_torchvision()
    features = torchvision.models.vgg.make_layers([8, "M", 16], batch_norm=True)
    src = save_torch(features.state_dict(), tmp_path / "vgg_bn.pth", legacy=False)
    with pytest.raises(WeightsError, match="not a torchvision VGG16"):
        load_weights(src)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickled_callable_is_refused_not_run(tmp_path):
    # a zip checkpoint whose data.pkl would call os.system when unpickled by plain pickle
    src = tmp_path / "evil.pth"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": RunsCode()}, protocol=2))
    with pytest.raises(WeightsError, match="system") as err:
        read_torch_checkpoint(src)
    assert "state dicts" in str(err.value)


def test_not_a_checkpoint_is_refused(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="not a torch checkpoint"):
        load_weights(text)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "absent.pth")


def test_npz_round_trip_keeps_arrays_and_convention(tmp_path, rng):
    state = {"conv1_1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "conv1_1.bias": rng.standard_normal(4).astype(np.float32)}
    path = save_weights(tmp_path / "w.npz", state, TORCHVISION)
    loaded, convention = load_weights(path)
    assert convention == TORCHVISION
    assert sorted(loaded) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    assert [p for p in os.listdir(tmp_path) if p != "w.npz"] == []   # no temporary file left


def test_npz_without_convention_is_caffe(tmp_path, rng):
    np.savez(tmp_path / "caffe.npz", **{"fc7.weight": rng.standard_normal((8, 8)), "fc7.bias": np.zeros(8)})
    _, convention = load_weights(tmp_path / "caffe.npz")
    assert convention == CAFFE


def test_npz_of_wrong_shape_or_names_is_refused(tmp_path, rng):
    np.savez(tmp_path / "bad.npz", **{"conv1_1.weight": np.zeros((4, 2, 3, 3))})   # 2 input channels
    with pytest.raises(WeightsError, match=r"conv1_1\.weight has shape \(4, 2, 3, 3\)"):
        load_weights(tmp_path / "bad.npz")
    np.savez(tmp_path / "tv.npz", **{"features.0.weight": np.zeros((4, 3, 3, 3))})
    with pytest.raises(WeightsError, match="torchvision names"):
        load_weights(tmp_path / "tv.npz")
    np.savez(tmp_path / "other.npz", **{"layer.weight": np.zeros(3)})
    with pytest.raises(WeightsError, match="no minidet layer"):
        load_weights(tmp_path / "other.npz")


def test_save_failure_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_weights(path, {"fc7.weight": np.ones((2, 2)), "fc7.bias": np.ones(2)}, CAFFE)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, {"fc7.weight": np.zeros((2, 2))}, CAFFE)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.npz"]


def test_convention_entry_is_json(tmp_path):
    path = save_weights(tmp_path / "w.npz", {"fc7.bias": np.zeros(2)}, TORCHVISION)
    with np.load(path) as archive:
        assert json.loads(str(archive[CONVENTION_KEY]))["channel_order"] == "RGB"


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "convert-weights" in capsys.readouterr().out
    assert main([str(tmp_path / "absent.pth"), str(tmp_path / "out.npz")]) == 1
    assert "absent.pth" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
