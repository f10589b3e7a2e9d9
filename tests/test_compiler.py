"""fnlearn.compiler: which options fnlearn's programs get, and that they reach XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import compiler


def test_cpu_programs_get_llvm_o1_unless_xla_flags_names_a_level(monkeypatch):
    assert jax.default_backend() == "cpu"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    assert compiler.options() == {"xla_backend_optimization_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert compiler.options() == {}
    monkeypatch.delenv("XLA_FLAGS")
    assert compiler.options() == {"xla_backend_optimization_level": 1}


def test_other_backends_get_no_options(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compiler.jax, "default_backend", lambda: "gpu")
    assert compiler.options() == {}


def test_a_program_s_options_reach_the_compiler(monkeypatch):
    # An option XLA does not know fails the compilation: proof the options are passed on.
    monkeypatch.setattr(compiler, "options", lambda: {"xla_no_such_option_here": 1})
    doubled = compiler.program(lambda x: x * 2)
    with pytest.raises(Exception, match="xla_no_such_option_here"):
        doubled(jnp.ones(3))


def test_a_program_computes_as_jax_jit_does_and_keeps_one_jit_per_option_set(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)

    @compiler.program(static_argnames="power")
    def raised(x, *, power):
        return x ** power

    x = jnp.arange(4.0)
    np.testing.assert_array_equal(raised(x, power=3), x ** 3)
    assert raised.jitted() is raised.jitted()
    assert "stablehlo.multiply" in raised.lower(x, power=2).as_text()
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    np.testing.assert_array_equal(raised(x, power=3), x ** 3)
    assert len(raised._by_options) == 2
