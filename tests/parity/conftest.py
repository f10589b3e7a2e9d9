"""Live parity checks against PyTorch and TensorFlow/Keras: framework fixtures and a record.

Without the parity extra the checks are skipped with a one-line reason. With
``FNLEARN_REQUIRE_PARITY=1`` (CI sets it) a missing framework is a failure instead, so a
broken install cannot pass as "all skipped" (``need`` in ``tests/conftest.py``).

Every check records its worst measured error with ``record``; the terminal summary lists
them, which is where the numbers in docs/parity.md come from.
"""

from __future__ import annotations

import os

import pytest

# tests/conftest.py prints what ``record`` notes under this key.
MEASURED_PROPERTY = "parity_measured"

# Before TensorFlow is imported anywhere: its C++ logging is otherwise a page per run, and
# Keras must run on TensorFlow here (GradientTape, TF kernels), whatever the user's default.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

@pytest.fixture(scope="session")
def torch(need):
    """The ``torch`` module, with CPU threads fixed so results repeat run to run."""
    module = need("torch")
    module.set_num_threads(1)
    return module


@pytest.fixture(scope="session")
def tf(need):
    """The ``tensorflow`` module."""
    return need("tensorflow")


@pytest.fixture(scope="session")
def keras(tf, need):
    """The ``keras`` module (Keras 3 on the TensorFlow backend)."""
    module = need("keras")
    if module.backend.backend() != "tensorflow":
        pytest.fail(f"Keras runs on {module.backend.backend()!r}; the parity checks need "
                    "KERAS_BACKEND=tensorflow set before keras is first imported",
                    pytrace=False)
    return module


@pytest.fixture
def record(request):
    """``record(what, value)``: notes a measured number for the end-of-run summary.

    The note travels with the test's report (``user_properties``), so the summary that
    ``tests/conftest.py`` prints lists it whether the test ran in this process or in a
    pytest-xdist worker.
    """

    def note(what: str, value) -> None:
        request.node.user_properties.append(
            (MEASURED_PROPERTY, f"{request.node.name}: {what}: {value}"))

    return note


@pytest.fixture(scope="session")
def mnist_subset():
    """The first 2048 images of fnlearn's MNIST sample as ``x / 255.0`` float32, and labels."""
    from fnlearn import data

    (images, labels), _ = data.load_mnist(source="sample")
    return (images[:2048] / 255.0).astype("float32"), labels[:2048]


@pytest.fixture(scope="session")
def mnist_images():
    """Real MNIST test images, uint8 ``(N, 28, 28, 1)``, and labels: the full data from
    ``$FNLEARN_DATA_DIR`` when set (CI), else fnlearn's sample."""
    from fnlearn import data

    source = "idx" if os.environ.get("FNLEARN_DATA_DIR") else "sample"
    _, (images, labels) = data.load_mnist(source=source)
    return images[..., None], labels.astype("int64")


@pytest.fixture(scope="session")
def torch_net(torch):
    """The PyTorch examples' ``mnist/main.py`` ``Net``, written as the class it is.

    ``Net(dropout=False)`` leaves out the two dropouts, for runs that must be deterministic.
    """
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self, dropout: bool = True):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
            self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = torch.nn.Dropout(0.25) if dropout else torch.nn.Identity()
            self.dropout2 = torch.nn.Dropout(0.5) if dropout else torch.nn.Identity()
            self.fc1 = torch.nn.Linear(9216, 128)
            self.fc2 = torch.nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    return Net


@pytest.fixture(scope="session")
def torchvision(torch, need):
    """The ``torchvision`` module, for its model definitions (``resnet18``).

    The package index this project installs from has only torchvision's CUDA build for
    torch 2.13, whose C++ operators (``nms``...) cannot load beside the CPU build of
    torch: torchvision then fails at import, registering Python fallbacks for two of
    them. Their schemas are declared first, so the pure-Python models import; no test
    uses the operators.
    """
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    library = None  # the declarations last as long as this object: the whole session
    if spec is not None and not _torchvision_ops_load(torch, spec):
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold, "
                       "float quant_scale) -> Tensor")
    yield need("torchvision")
    del library


def _torchvision_ops_load(torch, spec) -> bool:
    import glob

    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False
