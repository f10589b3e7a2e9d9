"""How fnlearn compiles its own programs: ``jax.jit`` with LLVM at -O1 on CPU.

XLA:CPU hands each fused kernel to LLVM at ``-O3`` by default. For the programs a
training run compiles (the model's initialization, the training epoch, evaluation,
prediction) ``-O1`` took 30-39% less compile time over a run, trained to the same bits
in float32 and bfloat16, and ran the epochs as fast, on every recipe measured
(``docs/performance.md``, "Compile time"; ``tests/test_compile_flags.py`` trains at
both levels and compares the weights). float16 arithmetic, which XLA:CPU runs through
float32, rounds differently at the two levels. So ``fit``, ``evaluate``, ``predict``,
``init_state`` and the model server compile at ``-O1`` on CPU.

The option is per program (``jax.jit(..., compiler_options=...)``): nothing global
changes, and a ``jax.jit`` of your own compiles as JAX does. It is left out

* on GPU and TPU (their code generators are tuned differently; not measured), and
* when ``XLA_FLAGS`` already names ``--xla_backend_optimization_level``: your level wins.
"""

from __future__ import annotations

import os

import jax

LEVEL_FLAG = "xla_backend_optimization_level"
#: LLVM's optimization level for fnlearn's programs on CPU.
CPU_LEVEL = 1


def options() -> dict[str, int]:
    """The compiler options fnlearn's programs get on the default backend, now."""
    if LEVEL_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    if jax.default_backend() != "cpu":
        return {}
    return {LEVEL_FLAG: CPU_LEVEL}


class Program:
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``options()``.

    Called, lowered or traced like the ``jax.jit`` it wraps. The options are read at each
    call (they depend on the backend, which is not known at import); each distinct set
    has one ``jax.jit``, so repeated calls keep JAX's fast dispatch path.
    """

    def __init__(self, fn, **jit_kwargs):
        self.fn = fn
        self.jit_kwargs = jit_kwargs
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "program")
        self._by_options: dict[tuple, object] = {}

    def jitted(self):
        """The ``jax.jit`` for the current options."""
        chosen = options()
        key = tuple(sorted(chosen.items()))
        if key not in self._by_options:
            self._by_options[key] = jax.jit(self.fn, compiler_options=chosen or None,
                                            **self.jit_kwargs)
        return self._by_options[key]

    def __call__(self, *args, **kwargs):
        return self.jitted()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """``jax.jit(...).lower`` with the current options."""
        return self.jitted().lower(*args, **kwargs)

    def trace(self, *args, **kwargs):
        """``jax.jit(...).trace`` with the current options."""
        return self.jitted().trace(*args, **kwargs)


def program(fn=None, **jit_kwargs):
    """``Program(fn, **jit_kwargs)``; usable as a decorator, with or without arguments."""
    if fn is None:
        return lambda f: Program(f, **jit_kwargs)
    return Program(fn, **jit_kwargs)
