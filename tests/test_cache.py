"""Importing fnlearn changes nothing in JAX; its first compiled call turns the cache on."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import fnlearn as fl

ROOT = Path(__file__).resolve().parents[1]
IMPORT_ONLY = "import fnlearn, jax; print(jax.config.jax_compilation_cache_dir)"
FIRST_USE = ("import fnlearn, jax, numpy as np\n"
             "before = jax.config.jax_compilation_cache_dir\n"
             "model = fnlearn.nn.serial(fnlearn.nn.Dense(2))\n"
             "params = fnlearn.nn.init(model, 0, (3,))\n"
             "fnlearn.predict(model, params, np.ones((4, 3), np.float32))\n"
             "print(before, jax.config.jax_compilation_cache_dir)")


def run(program: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("FNLEARN_COMPILATION_CACHE", "FNLEARN_CACHE_DIR",
                                "JAX_COMPILATION_CACHE_DIR")}
    environment.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_import_leaves_jax_config_and_the_home_folder_alone(tmp_path):
    assert run(IMPORT_ONLY, XDG_CACHE_HOME=str(tmp_path)) == "None"
    assert not (tmp_path / "fnlearn").exists()


def test_cache_is_on_from_the_first_compiled_call_in_the_user_cache_folder(tmp_path):
    folder = tmp_path / "fnlearn" / "jax"
    assert run(FIRST_USE, XDG_CACHE_HOME=str(tmp_path)) == f"None {folder}"
    assert folder.is_dir()


def test_cache_folder_can_be_chosen_or_turned_off(tmp_path):
    assert run(FIRST_USE, FNLEARN_CACHE_DIR=str(tmp_path / "c")) == f"None {tmp_path / 'c'}"
    assert run(FIRST_USE, FNLEARN_COMPILATION_CACHE="0",
               XDG_CACHE_HOME=str(tmp_path)) == "None None"
    assert not (tmp_path / "fnlearn").exists()


def test_a_folder_the_user_gave_jax_is_kept(tmp_path):
    mine = str(tmp_path / "mine")
    assert run(FIRST_USE, JAX_COMPILATION_CACHE_DIR=mine) == f"{mine} {mine}"


def test_count_compilations_sees_a_new_shape_and_not_a_repeat():
    model = fl.nn.serial(fl.nn.Dense(3))
    params = fl.nn.init(model, 0, (5,))
    with fl.count_compilations() as first:
        fl.predict(model, params, np.ones((7, 5), np.float32))
    with fl.count_compilations() as again:
        fl.predict(model, params, np.ones((7, 5), np.float32))
    with fl.count_compilations() as other:
        fl.predict(model, params, np.ones((9, 5), np.float32))
    assert first["jit(predict)"] == 1
    assert sum(again.values()) == 0
    assert other["jit(predict)"] == 1
