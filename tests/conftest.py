"""Shared test settings: no test may reach the internet, the user's data cache or their
compilation cache."""

import os
import pathlib
import tempfile

import pytest

from fnlearn.data import download


@pytest.fixture(autouse=True)
def no_public_downloads(monkeypatch, tmp_path_factory):
    """Point dataset downloads at a closed loopback port and a fresh cache folder.

    A test that downloads sets FNLEARN_DATASET_MIRROR to its own loopback server. Subprocesses
    inherit both variables.
    """
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:9/")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path_factory.mktemp("fnlearn-cache")))


def pytest_configure(config):
    """Compiled programs go to a folder of this run, not the user's ``~/.cache/fnlearn/jax``.

    A compilation cache shared with other processes and older versions is not what the
    tests are about; each run starts empty (subprocesses inherit the folder). Subprocesses
    also import this checkout's fnlearn, whatever else the environment has installed.
    """
    root = str(pathlib.Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])
    if "FNLEARN_CACHE_DIR" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["FNLEARN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fnlearn-test-jax-")


@pytest.fixture(autouse=True, scope="module")
def fresh_jax_caches():
    """Drop the compiled programs of each test module when it ends.

    A whole run compiles thousands of XLA programs; kept alive in one process their
    code mappings pile up (the process ran out of them once, and crashed compiling).
    """
    yield
    import jax

    jax.clear_caches()
