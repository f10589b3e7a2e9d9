"""JAX's persistent compilation cache, on by default in a user cache folder.

Compiling the training epoch takes about a second on a small CPU; with the
cache warm a new process loads the executable instead. fnlearn turns the cache
on the first time fnlearn compiles (the first ``fit``, ``evaluate``, ``predict`` or
``init_state``), not on import, unless

* ``FNLEARN_COMPILATION_CACHE=0`` (or ``off``/``false``) is set, or
* the user already chose a folder (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``), which is kept.

The folder is ``$FNLEARN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fnlearn/jax``, else
``~/.cache/fnlearn/jax``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
from collections.abc import Iterator

import jax

# Programs that compile faster than this are not worth a disk write and read.
MIN_COMPILE_SECONDS = 0.05


def default_cache_dir() -> pathlib.Path:
    """Where fnlearn keeps compiled programs unless told otherwise."""
    if os.environ.get("FNLEARN_CACHE_DIR"):
        return pathlib.Path(os.environ["FNLEARN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "fnlearn" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Turns on JAX's persistent compilation cache in ``path`` (default: ``default_cache_dir()``).

    Returns:
      The folder in use.
    """
    folder = pathlib.Path(path) if path is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder


def disable_compilation_cache() -> None:
    """Turns the persistent compilation cache off for this process (and its children).

    Sets ``FNLEARN_COMPILATION_CACHE=0`` so that fnlearn does not turn it on again.
    """
    os.environ["FNLEARN_COMPILATION_CACHE"] = "0"
    jax.config.update("jax_compilation_cache_dir", None)


def enable_by_default() -> None:
    """Turns the cache on unless the user turned it off or already configured JAX's own.

    Called by ``fit``, ``evaluate``, ``predict`` and ``init_state``; cheap after the first call.
    """
    setting = os.environ.get("FNLEARN_COMPILATION_CACHE", "1").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    try:
        enable_compilation_cache()
    except OSError:
        # A read-only home must not stop training: it only costs compile time.
        pass


_LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def count_compilations() -> Iterator[collections.Counter]:
    """Counts the programs JAX lowers for compilation inside the block, by function name.

    A program found in JAX's in-memory cache is not lowered again, so a second
    ``fit`` on data of the same shape adds nothing. Built on ``jax.monitoring``::

        with fnlearn.count_compilations() as compiled:
            fnlearn.fit(...)
        compiled["jit__train_epochs"]   # 1 the first time, 0 after
    """
    counts: collections.Counter = collections.Counter()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _LOWERING_EVENT:
            counts[str(kwargs.get("fun_name", "?"))] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
