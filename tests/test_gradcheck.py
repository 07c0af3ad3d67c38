import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from minidet.gradcheck import CASES, check_layer, check_loss, main, numerical_gradient, relative_error


class Scale:
    """y = x * w (w broadcast over the last axis), with a right or a deliberately wrong backward."""

    def __init__(self, width, bug=None):
        self.params = {"w": np.linspace(0.5, 2.0, width)}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x * self.params["w"]

    def backward(self, dy):
        dw = (dy * self.x).reshape(-1, self.x.shape[-1]).sum(axis=0)
        self.grads = {"w": dw / 2 if self.bug == "dw" else dw}
        return dy if self.bug == "dx" else dy * self.params["w"]


class Gather:
    """y = 3 x[index]: two inputs, only x has a gradient (as RoIPool.forward(x, rois))."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x, index):
        self.x_shape, self.index = x.shape, index
        return 3 * x[index]

    def backward(self, dy):
        dx = np.zeros(self.x_shape)
        np.add.at(dx, self.index, 3 * dy)  # repeated indices add up
        return dx


@given(arrays(np.float64, array_shapes(max_dims=3, max_side=4), elements=st.floats(-2, 2)))
def test_numerical_gradient_of_a_cubic_is_three_x_squared(x):
    np.testing.assert_allclose(numerical_gradient(lambda v: np.sum(v**3), x), 3 * x**2, atol=1e-6)


def test_numerical_gradient_restores_its_input_and_sees_it_through_other_names(rng):
    x = rng.standard_normal((3, 4))
    before, alias = x.copy(), x
    grad = numerical_gradient(lambda _: np.sum(np.sin(alias)), x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(grad, np.cos(x), atol=1e-8)


def test_numerical_gradient_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(np.sum, np.ones(3, np.float32))


def test_relative_error_is_the_largest_difference_over_the_largest_magnitude():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.1])) == pytest.approx(0.1 / 4.1)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1.0, -3.0]), np.array([-1.0, 3.0])) == 1.0


def test_check_layer_passes_a_right_backward(rng):
    errors = check_layer(Scale(4), rng.standard_normal((3, 4)))
    assert set(errors) == {"input0", "w"} and max(errors.values()) < 1e-9


@pytest.mark.parametrize("bug, wrong", [("dx", "input0"), ("dw", "w")])
def test_check_layer_catches_a_wrong_backward(bug, wrong, rng):
    errors = check_layer(Scale(4, bug=bug), rng.standard_normal((3, 4)))
    assert errors[wrong] > 1e-2
    assert all(error < 1e-9 for name, error in errors.items() if name != wrong)


def test_check_layer_checks_only_the_inputs_in_wrt(rng):
    errors = check_layer(Gather(), rng.standard_normal((5, 2)), np.array([0, 3, 3, 1]))
    assert list(errors) == ["input0"] and errors["input0"] < 1e-9


def test_check_loss_catches_a_gradient_off_by_a_factor(rng):
    def half_square(x):
        return 0.5 * np.sum(x * x), x

    def wrong(x):
        return 0.5 * np.sum(x * x), 2 * x

    x = rng.standard_normal(5)
    assert check_loss(half_square, x)["input0"] < 1e-9
    assert check_loss(wrong, x)["input0"] == pytest.approx(1 / 3)


def test_cli_prints_a_passing_table(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["layer", "inputs", "->", "output", "quantity", "rel.", "error", "result"]
    for name in ["Linear", "ReLU", "Dropout", "Flatten", "softmax_log_loss", "smooth_l1_loss", "fast_rcnn_loss"]:
        assert name in out
    assert "FAIL" not in out
    assert out.count(" pass") >= 10


def test_cli_filters_layers_by_name_in_any_case(capsys):
    assert main(["relu", "--seed", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[0] == "ReLU" and rows[1].endswith("pass")
    assert rows[-1] == "1 of 1 checks pass"


def test_cli_names_the_choices_for_an_unknown_layer(capsys):
    assert main(["Conv3d"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'Conv3d'" in err and all(name in err for name in CASES)


def test_cli_exits_1_when_a_check_fails(capsys, monkeypatch):
    monkeypatch.setitem(CASES, "ReLU", lambda rng, seed: ("(1,) -> (1,)", {"input0": 0.5}))
    assert main(["ReLU"]) == 1
    assert capsys.readouterr().out.splitlines()[1].endswith("FAIL")


def test_cli_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "minidet gradcheck" in capsys.readouterr().out
