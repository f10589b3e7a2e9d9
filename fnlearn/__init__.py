"""fnlearn: pure-function models, Optax optimizers and a compiled fit loop for JAX.

Modules, one concept each:

- ``nn``: layers as ``(init, apply)`` pairs, ``serial``, graph models (``Input``, ``Model``),
  recurrent and attention layers, precision policies, ``summary``, Flax interop.
- ``models``: the reference programs' models. ``losses``: losses (and metric names);
  ``metrics``: the ``Metric`` protocol, streaming precision, recall and AUC.
- ``optim``: Optax presets matching Keras and PyTorch.
- ``state``: ``TrainState``, ``History``. ``step``: the pure ``train_step`` and ``train_epoch``,
  ``init_state``, ``apply_gradients``. ``objectives``: the built-in step's losses and metrics,
  or your own step (``Custom``).
- ``loop``: the one epoch loop behind ``fit``, its compiled programs and the ``Callback``
  protocol. ``train`` (``fit``, ``evaluate``, ``predict``): the drivers over it.
- ``data``: MNIST and Fashion-MNIST from IDX files, tensorflow-datasets, a verified
  download or the shipped sample.
- ``graph``, ``tensors``, ``autodiff``: the traced graph, arrays and devices, gradient checks.
- ``callbacks``, ``checkpoint``, ``export``: Orbax checkpoints, resume, ``jax.export``.
- ``saving``: the whole model (architecture as JSON, training state) saved and loaded;
  ``architecture``: the JSON alone.
- ``logging``: ``TensorBoard`` and ``CSVLogger`` callbacks.
- ``parity``: weights to and from PyTorch and Keras, and tolerance-aware comparisons.
- ``sources``: datasets larger than memory (random-access sources, grain) that ``fit`` streams.
- ``distributed``: meshes and multi-host set-up. ``sharding``: FSDP and tensor-parallel
  parameter sharding. ``plots``: pictures of a run. ``serve``: TensorFlow Serving's APIs.

Heavy libraries (Orbax, TensorFlow, PyTorch, matplotlib, tensorflow-datasets) are
imported only by the functions that use them.
"""

__version__ = "0.3.0"

from fnlearn import (  # noqa: E402 - the version is readable even if an import fails
    architecture,
    autodiff,
    callbacks,
    checkpoint,
    data,
    distributed,
    export,
    graph,
    logging,
    losses,
    metrics,
    models,
    nn,
    optim,
    parity,
    plots,
    saving,
    sources,
    tensors,
)
from fnlearn.cache import (
    count_compilations,
    disable_compilation_cache,
    enable_compilation_cache,
)
from fnlearn.callbacks import EarlyStopping, ModelCheckpoint
from fnlearn.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    restore_checkpoint,
    restore_params,
    save_checkpoint,
)
from fnlearn.data import DataError, load_fashion_mnist, load_mnist
from fnlearn.export import ExportError, export_model, export_saved_model, load_exported
from fnlearn.logging import CSVLogger, TensorBoard
from fnlearn.loop.hooks import Callback
from fnlearn.objectives import Batch, masked_mean
from fnlearn.saving import SavingError, load_model, save_model
from fnlearn.state import History, NonFiniteLossError, TrainState
from fnlearn.step import apply_gradients, epoch_batches, init_state, train_epoch, train_step
from fnlearn.train import evaluate, fit, predict

__all__ = [
    "__version__",
    "Batch",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "DataError",
    "EarlyStopping",
    "ExportError",
    "History",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "SavingError",
    "TensorBoard",
    "TrainState",
    "apply_gradients",
    "architecture",
    "autodiff",
    "callbacks",
    "checkpoint",
    "count_compilations",
    "data",
    "disable_compilation_cache",
    "distributed",
    "enable_compilation_cache",
    "epoch_batches",
    "evaluate",
    "export",
    "export_model",
    "export_saved_model",
    "fit",
    "graph",
    "init_state",
    "latest_checkpoint",
    "load_exported",
    "load_fashion_mnist",
    "load_mnist",
    "load_model",
    "logging",
    "losses",
    "masked_mean",
    "metrics",
    "models",
    "nn",
    "optim",
    "parity",
    "plots",
    "predict",
    "restore_checkpoint",
    "restore_params",
    "save_checkpoint",
    "save_model",
    "saving",
    "sources",
    "tensors",
    "train_epoch",
    "train_step",
]
