"""Shared test settings: no test may reach the internet, the user's data cache or their
compilation cache; and what a test needs from outside the package, skipped or required.

A test that needs PyTorch or TensorFlow (the parity extra) gets it from ``need``; one that
needs the full MNIST or Fashion-MNIST from the ``full_mnist`` or ``full_fashion_mnist``
fixtures. Each skips with its reason, and fails instead when CI asks for it:
``FNLEARN_REQUIRE_PARITY=1`` for the frameworks, ``FNLEARN_REQUIRE_DATA=1`` for the data
(``.ci/run`` sets both), so a broken install cannot pass as "skipped".
"""

import importlib
import os
import pathlib
import tempfile

# The suite compiles thousands of small XLA programs; LLVM at -O1 instead of XLA's
# default -O3 compiles them faster with the same float32 bits (fnlearn's programs use -O1
# anyway; tests/test_compile_flags.py holds the bits to it). Set before JAX starts its
# backend; test subprocesses inherit it.
OPT_FLAG = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_FLAG}".strip()

import pytest  # noqa: E402

from fnlearn.data import download  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Where this project's machines keep the full datasets: beside the project.
SHARED_DATA = ROOT.parent / "shared" / "data"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def missing(flag: str, reason: str):
    """Skips the test, or fails it when the environment variable ``flag`` is ``1``."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def need():
    """``need(module_name)``: the module, or a skip (a failure with FNLEARN_REQUIRE_PARITY=1)."""

    def load(module_name: str):
        try:
            return importlib.import_module(module_name)
        except ImportError as error:
            missing("FNLEARN_REQUIRE_PARITY", f"{module_name} is not importable ({error}); "
                                              "pip install -e '.[parity]'")

    return load


def _idx_folder(folder: pathlib.Path, what: str) -> pathlib.Path:
    found = [name for name in IDX_NAMES
             if (folder / name).is_file() or (folder / f"{name}.gz").is_file()]
    if len(found) < len(IDX_NAMES):
        missing("FNLEARN_REQUIRE_DATA", f"the full {what} is not at {folder}")
    return folder


@pytest.fixture(scope="session")
def full_mnist() -> pathlib.Path:
    """The folder of the full MNIST: ``$FNLEARN_DATA_DIR``, else ``../shared/data/mnist``."""
    return _idx_folder(pathlib.Path(os.environ.get("FNLEARN_DATA_DIR")
                                    or SHARED_DATA / "mnist"), "MNIST")


@pytest.fixture(scope="session")
def full_fashion_mnist() -> pathlib.Path:
    """The folder of the full Fashion-MNIST: ``../shared/data/fashion-mnist``."""
    return _idx_folder(SHARED_DATA / "fashion-mnist", "Fashion-MNIST")


@pytest.fixture(autouse=True)
def no_public_downloads(monkeypatch, tmp_path_factory):
    """Point dataset downloads at a closed loopback port and a fresh cache folder.

    A test that downloads sets FNLEARN_DATASET_MIRROR to its own loopback server. Subprocesses
    inherit both variables.
    """
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:9/")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path_factory.mktemp("fnlearn-cache")))


# The ``user_properties`` key of the parity checks' measured errors (``record`` in
# tests/parity/conftest.py).
MEASURED_PROPERTY = "parity_measured"


def pytest_runtest_logreport(report):
    """Keep the measured errors a test noted (in this process or a worker) for the summary."""
    if report.when == "call":
        _MEASURED.extend(value for key, value in report.user_properties
                         if key == MEASURED_PROPERTY)


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("parity: measured worst errors")
        for line in _MEASURED:
            terminalreporter.write_line(line)


_MEASURED: list[str] = []


def pytest_configure(config):
    """Compiled programs go to a folder of this run, not the user's ``~/.cache/fnlearn/jax``.

    A compilation cache shared with other processes and older versions is not what the
    tests are about; each run starts empty (subprocesses inherit the folder). Subprocesses
    also import this checkout's fnlearn, whatever else the environment has installed.
    """
    root = str(ROOT)
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
