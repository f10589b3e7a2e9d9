"""JAX's persistent compilation cache, on by default in a user cache folder.

Compiling the training epoch takes about a second on a small CPU; with the
cache warm a new process loads the executable instead. fnlearn turns the cache
on when imported, unless

* ``FNLEARN_COMPILATION_CACHE=0`` (or ``off``/``false``) is set, or
* the user already chose a folder (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``), which is kept.

The folder is ``$FNLEARN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fnlearn/jax``, else
``~/.cache/fnlearn/jax``.
"""

from __future__ import annotations

import os
import pathlib

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
    """Turns the persistent compilation cache off for this process."""
    jax.config.update("jax_compilation_cache_dir", None)


def _enable_by_default() -> None:
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
