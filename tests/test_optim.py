"""SGD against updates written out by hand (Caffe's rule: v = mu v + lr_eff (g + decay_eff w); w -= v)."""
import numpy as np
import pytest

from minidet.optim import SGD


def make_params():
    return {"fc.weight": np.array([1.0, -2.0]), "fc.bias": np.array([0.5])}


def test_three_steps_match_hand_computation():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, step_size=2, gamma=0.1)
    # step 1 (lr 0.1): g_w = (0.5, 1), g_b = 1
    #   v_w = 0.1 * (0.5 + 0.01 * 1) = 0.051,  0.1 * (1 + 0.01 * -2) = 0.098  -> w = 0.949, -2.098
    #   v_b = 0.2 * 1 (bias: lr x2, no decay) = 0.2                             -> b = 0.3
    opt.step({"fc.weight": np.array([0.5, 1.0]), "fc.bias": np.array([1.0])})
    np.testing.assert_allclose(params["fc.weight"], [0.949, -2.098], rtol=0, atol=1e-12)
    np.testing.assert_allclose(params["fc.bias"], [0.3], rtol=0, atol=1e-12)
    # step 2 (lr 0.1): g_w = (-1, 0), g_b = -0.5
    #   v_w0 = 0.9 * 0.051 + 0.1 * (-1 + 0.01 * 0.949) = -0.053151   -> w0 = 1.002151
    #   v_w1 = 0.9 * 0.098 + 0.1 * (0 + 0.01 * -2.098) = 0.086102    -> w1 = -2.184102
    #   v_b  = 0.9 * 0.2 + 0.2 * -0.5 = 0.08                          -> b = 0.22
    opt.step({"fc.weight": np.array([-1.0, 0.0]), "fc.bias": np.array([-0.5])})
    np.testing.assert_allclose(params["fc.weight"], [1.002151, -2.184102], rtol=0, atol=1e-12)
    np.testing.assert_allclose(params["fc.bias"], [0.22], rtol=0, atol=1e-12)
    # step 3: iteration 2 reaches step_size -> lr 0.01; zero gradients, only momentum and decay act
    #   v_w0 = 0.9 * -0.053151 + 0.01 * 0.01 * 1.002151 = -0.0477356849   -> w0 = 1.0498866849
    #   v_w1 = 0.9 * 0.086102 + 0.01 * 0.01 * -2.184102 = 0.0772733898    -> w1 = -2.2613753898
    #   v_b  = 0.9 * 0.08 = 0.072                                          -> b = 0.148
    assert opt.lr == pytest.approx(0.01)
    opt.step({"fc.weight": np.zeros(2), "fc.bias": np.zeros(1)})
    np.testing.assert_allclose(params["fc.weight"], [1.0498866849, -2.2613753898], rtol=0, atol=1e-12)
    np.testing.assert_allclose(params["fc.bias"], [0.148], rtol=0, atol=1e-12)
    assert opt.iteration == 3


def test_updates_arrays_in_place():
    params = make_params()
    weight = params["fc.weight"]
    SGD(params, lr=0.1).step({"fc.weight": np.ones(2), "fc.bias": np.ones(1)})
    assert params["fc.weight"] is weight and not np.allclose(weight, [1.0, -2.0])


def test_explicit_multipliers_override_the_bias_defaults():
    # lr_mult 0.5 on the weight, decay_mult 1 on the bias; momentum 0 so one step is lr_eff * (g + decay_eff w)
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.0, weight_decay=0.1,
              lr_mult={"fc.weight": 0.5}, decay_mult={"fc.bias": 1.0})
    opt.step({"fc.weight": np.array([1.0, 1.0]), "fc.bias": np.array([1.0])})
    # w = 1 - 0.05 * (1 + 0.1), -2 - 0.05 * (1 - 0.2); b = 0.5 - 0.2 * (1 + 0.05)
    np.testing.assert_allclose(params["fc.weight"], [0.945, -2.04], atol=1e-12)
    np.testing.assert_allclose(params["fc.bias"], [0.29], atol=1e-12)


def test_step_schedule_and_warmup():
    opt = SGD(make_params(), lr=0.01, step_size=100, gamma=0.1, warmup_iters=10, warmup_factor=0.1)
    # warmup: linear from 0.1 * lr at iteration 0 to lr at iteration 10
    assert opt.lr_at(0) == pytest.approx(0.001)
    assert opt.lr_at(5) == pytest.approx(0.01 * (0.1 * 0.5 + 0.5))
    assert opt.lr_at(10) == pytest.approx(0.01)
    assert opt.lr_at(99) == pytest.approx(0.01)
    assert opt.lr_at(100) == pytest.approx(0.001)
    assert opt.lr_at(250) == pytest.approx(0.0001)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = [{"fc.weight": rng.normal(size=2), "fc.bias": rng.normal(size=1)} for _ in range(4)]
    a_params = make_params()
    a = SGD(a_params, lr=0.1, step_size=3)
    for g in grads:
        a.step(g)
    b_params = make_params()
    b = SGD(b_params, lr=0.1, step_size=3)
    for g in grads[:2]:
        b.step(g)
    state = b.state_dict()
    c_params = {k: v.copy() for k, v in b_params.items()}
    c = SGD(c_params, lr=0.1, step_size=3)
    c.load_state_dict(state)
    assert c.iteration == 2
    for g in grads[2:]:
        c.step(g)
    for name in a_params:
        np.testing.assert_array_equal(c_params[name], a_params[name])


def test_float32_parameters_stay_float32():
    params = {"w.weight": np.ones(3, dtype=np.float32)}
    opt = SGD(params, lr=0.1)
    opt.step({"w.weight": np.ones(3, dtype=np.float32)})
    assert params["w.weight"].dtype == np.float32 and opt.velocity["w.weight"].dtype == np.float32


def test_gradient_of_wrong_shape_raises():
    opt = SGD(make_params())
    with pytest.raises(ValueError):
        opt.step({"fc.weight": np.ones(3), "fc.bias": np.ones(1)})


def test_in_place_step_rounds_as_the_formula_written_with_temporaries():
    rng = np.random.default_rng(3)
    params = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "fc.weight": rng.standard_normal((7, 5)).astype(np.float32),
              "fc.bias": rng.standard_normal(7).astype(np.float32)}
    expected = {k: v.copy() for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    opt = SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0005)
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        opt.step(grads)
        for name, w in expected.items():
            lr_mult, decay_mult = (2.0, 0.0) if name.endswith(".bias") else (1.0, 1.0)
            velocity[name] = velocity[name] * 0.9 + (0.01 * lr_mult) * (grads[name] + 0.0005 * decay_mult * w)
            w -= velocity[name]
        for name in params:
            assert params[name].dtype == np.float32
            np.testing.assert_array_equal(params[name], expected[name])
            np.testing.assert_array_equal(opt.velocity[name], velocity[name])


def test_steps_reuse_one_scratch_array_as_large_as_the_largest_parameter():
    params = {"a.weight": np.ones((10, 10)), "b.weight": np.ones(3), "b.bias": np.ones(3)}
    opt = SGD(params, lr=0.1)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    opt.step(grads)
    scratch = dict(opt._scratch_arrays)
    opt.step(grads)
    (dtype, flat), = scratch.items()
    assert dtype == np.float64 and flat.size == 100
    assert opt._scratch_arrays[dtype] is flat


@pytest.mark.parametrize("loss", [np.nan, np.inf, -np.inf])
def test_a_step_given_a_nonfinite_loss_changes_nothing(loss):
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step({"fc.weight": np.ones(2), "fc.bias": np.ones(1)})
    before = {k: v.copy() for k, v in params.items()}
    velocity = {k: v.copy() for k, v in opt.velocity.items()}
    opt.step({"fc.weight": np.ones(2), "fc.bias": np.ones(1)}, loss=np.float32(loss))
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])
        np.testing.assert_array_equal(opt.velocity[name], velocity[name])
    opt.step({"fc.weight": np.ones(2), "fc.bias": np.ones(1)}, loss=np.float32(2.0))
    assert not np.array_equal(params["fc.weight"], before["fc.weight"])
