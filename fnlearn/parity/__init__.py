"""Checking fnlearn against PyTorch and Keras: reference models, weights both ways, comparators.

- ``compare``: ``compare``/``assert_close`` one tensor, ``assert_close_trees`` a pytree,
  with reports that name the tensor, the context and the worst element.
- ``convert``: ``to_torch_module``/``to_keras_model`` build the network an fnlearn model
  computes; ``variables_to_torch``/``variables_from_torch`` (and the Keras pair) move
  weights and BatchNorm statistics, comparing layer kinds in order.
- ``torch_import``/``keras_import``: ``from_torch``/``from_keras`` import a live model (a
  chain or any graph) in one call, with its weights and a report of how closely it
  computes its source's function (``importer``); ``builders`` says what each operation
  becomes (``register_torch_import``/``register_keras_import`` add one).
- ``registry``: one registered entry per fnlearn layer kind (what both converters share).
  ``graphs``: a model as a chain of ops, read from PyTorch with ``torch.fx`` and from Keras.

PyTorch and TensorFlow are imported only inside the functions that need them.
"""

from fnlearn.parity import sequence_import  # noqa: F401, I001 - registers sequence builders
from fnlearn.parity.builders import (
    KERAS_BUILDERS,
    TORCH_BUILDERS,
    register_keras_import,
    register_torch_import,
)
from fnlearn.parity.compare import (
    Comparison,
    assert_close,
    assert_close_trees,
    compare,
    to_numpy,
)
from fnlearn.parity.convert import (
    align,
    params_from_keras,
    params_from_torch,
    params_to_keras,
    params_to_torch,
    to_keras_model,
    to_torch_module,
    variables_from_keras,
    variables_from_torch,
    variables_to_keras,
    variables_to_torch,
)
from fnlearn.parity.graphs import keras_ops, torch_ops
from fnlearn.parity.importer import Imported, ImportMismatchError, Report
from fnlearn.parity.keras_import import from_keras
from fnlearn.parity.registry import REGISTRY, register
from fnlearn.parity.torch_import import from_torch

__all__ = [
    "KERAS_BUILDERS", "REGISTRY", "TORCH_BUILDERS", "Comparison", "ImportMismatchError",
    "Imported", "Report", "align",
    "assert_close", "assert_close_trees", "compare", "from_keras", "from_torch", "keras_ops",
    "params_from_keras", "params_from_torch", "params_to_keras", "params_to_torch", "register",
    "register_keras_import", "register_torch_import",
    "to_keras_model", "to_numpy", "to_torch_module", "torch_ops", "variables_from_keras",
    "variables_from_torch", "variables_to_keras", "variables_to_torch",
]
