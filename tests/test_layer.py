"""The Layer interface and Sequential: mode as state, names flattened, the backward stopping at None."""
import numpy as np
import pytest

from minidet.nn.activation import ReLU
from minidet.nn.dropout import Dropout
from minidet.nn.layer import Layer, Sequential
from minidet.nn.linear import Linear


def test_the_base_layer_has_no_computation_of_its_own():
    layer = Layer()
    assert (layer.params, layer.grads, layer.frozen, layer.needs_input_grad, layer.training) == ({}, {}, False, True, True)
    with pytest.raises(NotImplementedError):
        layer.forward(np.zeros(2))
    with pytest.raises(NotImplementedError):
        layer.backward(np.zeros(2))


def test_sequential_runs_its_layers_and_backward_is_their_chain_rule(rng):
    a, b = Linear(3, 4, dtype=np.float64, rng=0), Linear(4, 2, dtype=np.float64, rng=1)
    net = Sequential([("a", a), ("relu", ReLU()), ("inner", Sequential([("b", b)]))])
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    h = x @ a.params["weight"].T + a.params["bias"]
    np.testing.assert_allclose(net.forward(x), np.maximum(h, 0) @ b.params["weight"].T + b.params["bias"])
    dx = net.backward(dy)
    np.testing.assert_allclose(dx, ((dy @ b.params["weight"]) * (h > 0)) @ a.params["weight"])
    assert [name for name, _ in net.named_layers()] == ["a", "relu", "b"] and net["inner"]["b"] is b


def test_sequential_stops_at_the_lowest_layer_that_needs_no_input_gradient(rng):
    a, b = Linear(3, 4, rng=0), Linear(4, 2, rng=1)
    a.backward = lambda dy: pytest.fail("the backward went below b")
    b.needs_input_grad = False
    net = Sequential([("a", a), ("b", b)])
    net.forward(rng.standard_normal((5, 3)).astype(np.float32))
    assert net.backward(np.ones((5, 2), np.float32)) is None and set(b.grads) == {"weight", "bias"}


def test_train_and_eval_reach_every_layer_inside():
    drop = Dropout(0.5, seed=0)
    net = Sequential([("outer", Sequential([("drop", drop)]))])
    x = np.ones((4, 8), np.float32)
    assert net.eval() is net and not drop.training and net.forward(x) is x
    net.train()
    assert drop.training and not np.array_equal(net.forward(x), x)
