"""fnlearn.parity without PyTorch or TensorFlow: comparators, pairing checks, error messages."""

import jax
import numpy as np
import pytest

from fnlearn import nn, parity


def mnist_params():
    model = nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dropout(0.2),
                      nn.Dense(10, "softmax"))
    return nn.init(model, 0, (28, 28))


def test_compare_reports_the_worst_element():
    expected = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    actual = expected.copy()
    actual[1, 0] = 3.0003  # 1e-4 relative: the worst
    actual[0, 1] = 2.00001  # 5e-6 relative: within rtol 1e-5
    result = parity.compare("w", actual, expected, rtol=1e-5)
    assert not result.passed
    assert result.worst_index == (1, 0)
    assert result.max_abs_error == pytest.approx(3e-4, rel=1e-3)
    assert result.max_rel_error == pytest.approx(1e-4, rel=1e-3)
    assert "w (2, 2): MISMATCH" in str(result) and "worst at [1, 0]" in str(result)


def test_compare_passes_within_tolerance_and_uses_atol_near_zero():
    expected = np.array([0.0, 1.0])
    assert parity.compare("x", expected + [1e-7, 1e-6], expected, rtol=1e-5, atol=1e-6).passed
    assert not parity.compare("x", expected + [1e-5, 0.0], expected, rtol=1e-5, atol=1e-6).passed


def test_compare_handles_nan_and_shape_mismatch():
    assert parity.compare("x", [np.nan, 1.0], [np.nan, 1.0], rtol=0).passed
    result = parity.compare("x", [np.nan, 1.0], [0.0, 1.0], rtol=1e-3)
    assert not result.passed and result.worst_index == (0,)
    with pytest.raises(ValueError, match=r"actual shape \(3,\) != expected shape \(2,\)"):
        parity.compare("x", [1.0, 2.0, 3.0], [1.0, 2.0])


def test_assert_close_trees_names_tensor_step_and_element():
    expected = mnist_params()
    actual = jax.tree.map(np.array, expected)
    actual["dense_1"]["kernel"][5, 7] += 1e-3
    with pytest.raises(AssertionError) as error:
        parity.assert_close_trees(actual, expected, rtol=1e-5, atol=1e-7, context="step 17")
    message = str(error.value)
    assert message.startswith("step 17: 1 of 4 tensors differ beyond rtol=1e-05, atol=1e-07")
    assert "dense_1/kernel (128, 10): MISMATCH" in message and "worst at [5, 7]" in message


def test_assert_close_trees_returns_one_comparison_per_tensor():
    params = mnist_params()
    results = parity.assert_close_trees(params, params, rtol=0)
    assert sorted(r.name for r in results) == [
        "dense_0/bias", "dense_0/kernel", "dense_1/bias", "dense_1/kernel"]
    assert all(r.max_abs_error == 0 for r in results)


def test_assert_close_trees_reports_structure_differences():
    params = mnist_params()
    with pytest.raises(AssertionError, match=r"missing from actual \['dense_1/bias'"):
        parity.assert_close_trees({"dense_0": params["dense_0"], "dense_1": {
            "kernel": params["dense_1"]["kernel"]}}, params)


def test_torch_state_dict_round_trip_keeps_structure_and_values():
    # A state dict of NumPy arrays stands in for torch's: the pairing, the transposes and
    # the shape checks are the same code; only building tensors needs torch.
    params = mnist_params()
    state = {"1.weight": np.asarray(params["dense_0"]["kernel"]).T,
             "1.bias": np.asarray(params["dense_0"]["bias"]),
             "4.weight": np.asarray(params["dense_1"]["kernel"]).T,
             "4.bias": np.asarray(params["dense_1"]["bias"])}
    back = parity.params_from_torch(state, like=params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    parity.assert_close_trees(back, params, rtol=0)


def test_pairing_is_by_position_number_not_string_order():
    model = nn.serial(*[nn.Dense(3) for _ in range(11)])
    params = nn.init(model, 0, (3,))
    # Sorted as strings, dense_00 would come before dense_2.
    state = {f"{i}.weight": np.asarray(params[f"dense_{i}"]["kernel"]).T for i in range(11)}
    state.update({f"{i}.bias": np.asarray(params[f"dense_{i}"]["bias"]) for i in range(11)})
    sorted_params = dict(sorted(params.items()))
    parity.assert_close_trees(parity.params_from_torch(state, like=sorted_params), params, rtol=0)


def test_shape_mismatch_names_the_layer():
    params = mnist_params()
    state = {"1.weight": np.zeros((128, 784)), "1.bias": np.zeros(128),
             "4.weight": np.zeros((10, 64)), "4.bias": np.zeros(10)}
    with pytest.raises(ValueError, match=r"state_dict entries '4.\*' -> dense_1/kernel: shape "
                                         r"\(64, 10\) does not match \(128, 10\)"):
        parity.params_from_torch(state, like=params)


def test_layer_count_mismatch_is_an_error():
    state = {"0.weight": np.zeros((128, 784)), "0.bias": np.zeros(128)}
    with pytest.raises(ValueError, match=r"layer kinds differ: fnlearn layer 'dense_1' \(dense\) "
                                         r"is linear, but the PyTorch model has nothing left"):
        parity.params_from_torch(state, like=mnist_params())


def test_non_linear_parameters_are_refused():
    state = {"0.weight": np.zeros((8, 1, 3, 3)), "0.bias": np.zeros(8)}
    with pytest.raises(ValueError, match=r"fnlearn layer 'dense_0' \(dense\) is linear, but the "
                                         r"PyTorch model has conv2d at state_dict entries '0.\*'"):
        parity.params_from_torch(state, like={"dense_0": {"kernel": np.zeros((9, 8)),
                                                          "bias": np.zeros(8)}})


def test_non_dense_fnlearn_parameters_are_refused():
    with pytest.raises(ValueError, match="fnlearn layer 'conv_0' has parameters"):
        parity.params_from_torch({}, like={"conv_0": {"w": np.zeros(3)}})
