"""fnlearn.autodiff: the finite-difference gradient check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn.autodiff import GradientCheckError, Mismatch, check_grad


@jax.custom_vjp
def square_with_wrong_grad(x):
    return x**2


def _square_fwd(x):
    return x**2, x


def _square_bwd(x, g):
    # Planted bug: the gradient of element 1 is 1.5x too large.
    wrong = jnp.ones_like(x).at[1].set(1.5)
    return (g * 2 * x * wrong,)


square_with_wrong_grad.defvjp(_square_fwd, _square_bwd)


def loss_with_planted_bug(params, x):
    return jnp.sum(square_with_wrong_grad(params["w"]) * x) + jnp.sum(jnp.tanh(params["b"] @ x))


PARAMS = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.ones((2, 3))}
X = jnp.array([0.5, 1.0, 2.0])


def test_correct_gradient_passes_on_a_pytree():
    def loss(params, x):
        return jnp.sum(params["w"] ** 2 * x) + jnp.sum(jnp.tanh(params["b"] @ x))

    report = check_grad(loss, PARAMS, X)
    assert report.ok and report.mismatches == ()
    assert report.checked == 3 + 6
    assert report.max_abs_error < 1e-5
    assert str(report).startswith("gradient check passed: 9 elements agree")


@pytest.mark.parametrize("float64", [True, False])
def test_planted_wrong_gradient_is_named_by_leaf_and_element(float64):
    report = check_grad(loss_with_planted_bug, PARAMS, X, float64=float64)
    assert not report.ok
    (mismatch,) = report.mismatches
    assert (mismatch.leaf, mismatch.index) == ("['w']", (1,))
    # d/dw1 of w1**2 * x1 is 2 * w1 * x1 = 4; the planted backward says 6.
    assert mismatch.analytic == pytest.approx(6.0)
    assert mismatch.numeric == pytest.approx(4.0, rel=1e-2 if not float64 else 1e-6)
    assert "['w'][1]: analytic 6, numeric 4" in str(report)


def test_raise_on_failure_names_the_leaf():
    with pytest.raises(GradientCheckError, match=r"\['w'\]\[1\]: analytic 6"):
        check_grad(loss_with_planted_bug, PARAMS, X, raise_on_failure=True)


def test_matrix_leaf_index_is_two_dimensional():
    @jax.custom_vjp
    def double(m):
        return 2 * m

    double.defvjp(lambda m: (2 * m, None), lambda _, g: (2 * g.at[1, 2].set(0.0),))
    report = check_grad(lambda p: jnp.sum(double(p["layer"]["kernel"])),
                        {"layer": {"kernel": jnp.ones((2, 3))}})
    assert report.mismatches == (Mismatch("['layer']['kernel']", (1, 2), 0.0, pytest.approx(2.0)),)


def test_float32_differences_on_a_large_sum_do_not_give_false_alarms():
    params = {"a": jnp.linspace(0.0, 3.0, 500), "s": jnp.float32(2.0)}
    report = check_grad(lambda p: jnp.sum(jnp.sin(p["a"]) * p["s"]), params, float64=False)
    assert report.ok, str(report)


def test_mean_of_squares_matches_the_reference_gradient():
    report = check_grad(lambda x: jnp.mean(x**2), jnp.array([1.0, 2.0, 3.0]))
    assert report.ok and report.checked == 3
    np.testing.assert_allclose(jax.grad(lambda x: jnp.mean(x**2))(jnp.array([1.0, 2.0, 3.0])),
                               [2 / 3, 4 / 3, 2], rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="return a scalar"):
        check_grad(lambda p: p * 2, jnp.ones(3))
    with pytest.raises(TypeError, match=r"params leaf \['n'\] has dtype int32"):
        check_grad(lambda p: jnp.sum(p["n"]), {"n": jnp.arange(3)})
    with pytest.raises(ValueError, match="empty pytree"):
        check_grad(lambda p: 0.0, {})
