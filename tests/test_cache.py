"""fnlearn turns JAX's persistent compilation cache on at import, unless told not to."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import fnlearn, jax; print(jax.config.jax_compilation_cache_dir)"


def cache_dir_after_import(**env) -> str:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("FNLEARN_COMPILATION_CACHE", "FNLEARN_CACHE_DIR",
                                "JAX_COMPILATION_CACHE_DIR")}
    environment.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_cache_is_on_by_default_in_the_user_cache_folder(tmp_path):
    assert cache_dir_after_import(XDG_CACHE_HOME=str(tmp_path)) == str(tmp_path / "fnlearn" / "jax")
    assert (tmp_path / "fnlearn" / "jax").is_dir()


def test_cache_folder_can_be_chosen_or_turned_off(tmp_path):
    assert cache_dir_after_import(FNLEARN_CACHE_DIR=str(tmp_path / "c")) == str(tmp_path / "c")
    assert cache_dir_after_import(FNLEARN_COMPILATION_CACHE="0") == "None"


def test_a_folder_the_user_gave_jax_is_kept(tmp_path):
    mine = str(tmp_path / "mine")
    assert cache_dir_after_import(JAX_COMPILATION_CACHE_DIR=mine) == mine
