"""Checking fnlearn against PyTorch and Keras: weight conversion, reference models, comparators.

Three parts, in the order a parity check uses them:

* Reference models. ``to_torch_module(model, input_shape)`` and ``to_keras_model(model,
  input_shape)`` build the same network from an fnlearn ``serial`` model (Normalize,
  Flatten, Dense with its activation, ReLU, Softmax, Dropout).
* Weights, both ways. fnlearn's Dense stores ``kernel`` as ``(in, out)``, as Keras does;
  PyTorch's ``Linear.weight`` is ``(out, in)``, so conversion transposes. Dense layers are
  matched to ``Linear``/``Dense`` layers in order; layers without parameters are skipped on
  both sides, and every shape is checked before anything is copied.
* Comparators. ``compare`` measures one tensor against another; ``assert_close_trees``
  compares two pytrees and fails with a report that names the tensor, the context (the
  step) and the worst element.

PyTorch and TensorFlow are imported only inside the functions that need them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from fnlearn.nn import Layer

Params = dict[str, Any]

# Layer kinds that the reference-model builders and the weight converters understand.
SUPPORTED_FNLEARN_LAYERS = ("normalize", "flatten", "dense", "relu", "softmax", "dropout")
SUPPORTED_TORCH_MODULES = ("Linear", "ReLU", "Softmax", "Sigmoid", "Tanh", "Dropout",
                           "Flatten", "Identity", "Normalize")
SUPPORTED_KERAS_LAYERS = ("Dense", "ReLU", "Softmax", "Activation", "Dropout", "Flatten",
                          "Lambda", "Rescaling", "InputLayer")


# --- comparators ------------------------------------------------------------------------


class Comparison(NamedTuple):
    """How far ``actual`` is from ``expected``, and whether that is within tolerance.

    An element passes when ``|actual - expected| <= atol + rtol * |expected|`` (NumPy's
    ``allclose`` rule). ``worst_index`` is the element that uses most of that allowance
    (the largest absolute error when both tolerances are zero).
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    actual_at_worst: float
    expected_at_worst: float
    rtol: float
    atol: float
    passed: bool

    def __str__(self) -> str:
        where = f"[{', '.join(map(str, self.worst_index))}]"
        allowed = self.atol + self.rtol * abs(self.expected_at_worst)
        return (f"{self.name} {self.shape}: {'ok' if self.passed else 'MISMATCH'}, "
                f"max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g}; worst at {where}: actual "
                f"{self.actual_at_worst:.9g}, expected {self.expected_at_worst:.9g} "
                f"(allowed {allowed:.3g} there: rtol={self.rtol:g}, atol={self.atol:g})")


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of a JAX array, a NumPy array, a torch tensor or a TensorFlow tensor."""
    if hasattr(value, "detach"):  # torch: leave the autograd graph and the device first
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray | jax.Array):
        value = value.numpy()
    # Always a copy: torch's .numpy() shares memory with the tensor, so a later in-place
    # optimizer step would otherwise change the converted weights too.
    return np.array(value, copy=True)


def compare(name: str, actual: Any, expected: Any, *, rtol: float = 1e-5,
            atol: float = 0.0) -> Comparison:
    """Measures ``actual`` against ``expected`` element by element.

    Args:
      name: what is compared, for the report (``"dense_1/kernel"``).
      actual: the value under test (fnlearn's), any array-like.
      expected: the reference value (PyTorch's or Keras's), same shape.
      rtol: allowed error relative to ``|expected|``.
      atol: allowed absolute error, for elements near zero where relative error means little.

    Returns:
      A ``Comparison``. Errors are computed in float64, so they measure the inputs and not
      the rounding of the subtraction. NaN matches NaN and an infinity matches itself.

    Raises:
      ValueError: the shapes differ.
    """
    a = to_numpy(actual).astype(np.float64)
    e = to_numpy(expected).astype(np.float64)
    if a.shape != e.shape:
        raise ValueError(f"{name}: actual shape {a.shape} != expected shape {e.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        same_special = (np.isnan(a) & np.isnan(e)) | (np.isinf(a) & (a == e))
        abs_err = np.where(same_special, 0.0, np.abs(a - e))
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.abs(e))
        allowed = atol + rtol * np.abs(np.where(np.isfinite(e), e, 0.0))
        used = abs_err if atol == 0 and rtol == 0 else np.where(
            abs_err == 0, 0.0, abs_err / allowed)
    if a.size == 0:
        return Comparison(name, a.shape, 0.0, 0.0, (), math.nan, math.nan, rtol, atol, True)
    worst = np.unravel_index(int(np.argmax(used)), a.shape)
    return Comparison(
        name=name, shape=a.shape, max_abs_error=float(abs_err.max()),
        max_rel_error=float(rel_err.max()), worst_index=tuple(int(i) for i in worst),
        actual_at_worst=float(a[worst]), expected_at_worst=float(e[worst]),
        rtol=rtol, atol=atol, passed=bool(np.all(abs_err <= allowed)))


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path) or "<root>": leaf for path, leaf in leaves}


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def assert_close_trees(actual: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 0.0,
                       context: str = "") -> list[Comparison]:
    """Asserts that two pytrees hold the same tensors, each within tolerance.

    Args:
      actual: fnlearn's pytree (parameters, gradients, ...).
      expected: the reference pytree with the same structure (e.g. from ``params_from_torch``).
      rtol: allowed error relative to ``|expected|``, per element.
      atol: allowed absolute error, per element.
      context: where in a run this is (``"step 17"``), put at the head of the report.

    Returns:
      One ``Comparison`` per tensor, so a caller can record how close they were.

    Raises:
      AssertionError: the structures differ, or some tensor is out of tolerance; the message
        lists every offending tensor with its worst element.
    """
    head = f"{context}: " if context else ""
    actual_leaves, expected_leaves = _leaves_by_path(actual), _leaves_by_path(expected)
    missing = sorted(set(expected_leaves) - set(actual_leaves))
    extra = sorted(set(actual_leaves) - set(expected_leaves))
    if missing or extra:
        raise AssertionError(f"{head}pytrees differ in structure: missing from actual "
                             f"{missing}, not in expected {extra}")
    results, problems = [], []
    for path, expected_leaf in expected_leaves.items():
        try:
            result = compare(path, actual_leaves[path], expected_leaf, rtol=rtol, atol=atol)
        except ValueError as error:
            problems.append(f"  {error}")
            continue
        results.append(result)
        if not result.passed:
            problems.append(f"  {result}")
    if problems:
        raise AssertionError(
            f"{head}{len(problems)} of {len(expected_leaves)} tensors differ beyond "
            f"rtol={rtol:g}, atol={atol:g}:\n" + "\n".join(problems))
    return results


# --- reference models -------------------------------------------------------------------


# The configuration each supported kind carries. Checked as well as the kind, because a
# wrapped module can share a kind name: nn.from_flax(flax.linen.Dense(...)) is "dense" too.
_CONFIG_KEYS = {"normalize": ("mean", "std"), "dense": ("units", "activation"),
                "dropout": ("rate",), "flatten": (), "relu": (), "softmax": ()}


def _layers_of(model: Layer, target: str) -> tuple[Layer, ...]:
    """The model's layers, each checked to be one that ``target`` can be built from."""
    layers = model.children if model.kind == "serial" else (model,)
    for position, layer in enumerate(layers):
        keys = _CONFIG_KEYS.get(layer.kind)
        if keys is None or not all(key in layer.config for key in keys):
            raise ValueError(
                f"fnlearn layer {layer.kind!r} at position {position} cannot be built in "
                f"{target}: supported layers are fnlearn's own "
                f"{', '.join(SUPPORTED_FNLEARN_LAYERS)}")
    return layers


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("this fnlearn.parity function needs PyTorch: "
                          "pip install 'fnlearn[parity]'") from error
    return torch


def _import_keras():
    # Quiet TensorFlow's C++ start-up logging unless the user chose a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
    except ImportError as error:
        raise ImportError("this fnlearn.parity function needs TensorFlow and Keras: "
                          "pip install 'fnlearn[parity]'") from error
    return keras


def _torch_normalize(mean: float, std: float):
    torch = _import_torch()

    class Normalize(torch.nn.Module):
        """``(x - mean) / std`` in float32, as fnlearn's ``Normalize``."""

        def __init__(self):
            super().__init__()
            self.mean, self.std = mean, std

        def forward(self, x):
            x = x.to(torch.float32)
            # Divide (not multiply by 1/std) and skip a zero mean: fnlearn does, bit for bit.
            if self.mean != 0:
                x = x - self.mean
            return x / self.std

    return Normalize()


def _keras_normalize(keras, mean: float, std: float):
    def normalize(x):
        x = keras.ops.cast(x, "float32")
        # Divide (not multiply by 1/std) and skip a zero mean: fnlearn does, bit for bit.
        if mean != 0:
            x = x - mean
        return x / std

    return normalize


def to_torch_module(model: Layer, input_shape: Sequence[int], params: Params | None = None):
    """Builds the ``torch.nn.Sequential`` that computes what ``model`` computes.

    Args:
      model: an fnlearn ``serial`` model (or a single layer) of supported layers.
      input_shape: per-example input shape, to size the first ``Linear``.
      params: fnlearn parameters to load; None keeps PyTorch's own initialization.

    Returns:
      A ``torch.nn.Sequential``. A Dense with an activation becomes ``Linear`` followed by
      the activation module, so positions differ from fnlearn's; weights are matched in order.

    Raises:
      ValueError: a layer has no PyTorch counterpart here (its kind and position are named).
    """
    torch = _import_torch()
    nn = torch.nn
    activations = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                   "softmax": lambda: nn.Softmax(dim=-1)}
    modules, shape = [], tuple(input_shape)
    for layer in _layers_of(model, "PyTorch"):
        if layer.kind == "normalize":
            modules.append(_torch_normalize(layer.config["mean"], layer.config["std"]))
        elif layer.kind == "flatten":
            modules.append(nn.Flatten())
            shape = (math.prod(shape),)
        elif layer.kind == "dense":
            modules.append(nn.Linear(shape[-1], layer.config["units"]))
            shape = (*shape[:-1], layer.config["units"])
            if layer.config["activation"] != "linear":
                modules.append(activations[layer.config["activation"]]())
        elif layer.kind in ("relu", "softmax"):
            modules.append(activations[layer.kind]())
        else:
            modules.append(nn.Dropout(layer.config["rate"]))
    module = nn.Sequential(*modules)
    if params is not None:
        module.load_state_dict(params_to_torch(params, module))
    return module


def to_keras_model(model: Layer, input_shape: Sequence[int], params: Params | None = None):
    """Builds the ``keras.Sequential`` that computes what ``model`` computes.

    Args:
      model: an fnlearn ``serial`` model (or a single layer) of supported layers.
      input_shape: per-example input shape (``keras.Input(shape=...)``).
      params: fnlearn parameters to set; None keeps Keras's own initialization.

    Returns:
      A built ``keras.Sequential`` (not compiled). ``Normalize`` becomes a ``Lambda`` that
      divides, to round exactly as fnlearn does (``Rescaling`` multiplies by ``1/std``).

    Raises:
      ValueError: a layer has no Keras counterpart here (its kind and position are named).
    """
    keras = _import_keras()
    layers = [keras.Input(shape=tuple(input_shape))]
    for layer in _layers_of(model, "Keras"):
        if layer.kind == "normalize":
            layers.append(keras.layers.Lambda(_keras_normalize(
                keras, layer.config["mean"], layer.config["std"])))
        elif layer.kind == "flatten":
            layers.append(keras.layers.Flatten())
        elif layer.kind == "dense":
            layers.append(keras.layers.Dense(layer.config["units"],
                                             activation=layer.config["activation"]))
        elif layer.kind == "relu":
            layers.append(keras.layers.ReLU())
        elif layer.kind == "softmax":
            layers.append(keras.layers.Softmax(axis=-1))
        else:
            layers.append(keras.layers.Dropout(layer.config["rate"]))
    keras_model = keras.Sequential(layers)
    if params is not None:
        params_to_keras(params, keras_model)
    return keras_model


# --- weights ----------------------------------------------------------------------------


def _dense_entries(params: Params) -> list[tuple[str, dict]]:
    """fnlearn's parameterized layers in model order, checked to be Dense."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be the dict that serial's init returns, "
                        f"got {type(params).__name__}")

    def position(name: str) -> int:
        # Sort by the position number: as strings "dense_10" < "dense_2", and pytree
        # operations hand dicts back with sorted keys.
        suffix = name.rsplit("_", 1)[-1]
        if not suffix.isdigit():
            raise ValueError(f"parameter key {name!r} is not '<kind>_<position>' as serial "
                             "names them")
        return int(suffix)

    entries = sorted(params.items(), key=lambda item: position(item[0]))
    for name, layer_params in entries:
        if not isinstance(layer_params, dict) or set(layer_params) != {"kernel", "bias"}:
            keys = sorted(layer_params) if isinstance(layer_params, dict) else layer_params
            raise ValueError(f"fnlearn layer {name!r} has parameters {keys}; only Dense "
                             "(kernel, bias) layers can be converted")
    return entries


def _torch_linear_names(source) -> tuple[list[str], dict[str, Any]]:
    """Names of the ``Linear`` layers of a torch module or state dict, in order, and its tensors.

    Only layers that have parameters must be Linear; a module's other leaves must be among
    ``SUPPORTED_TORCH_MODULES``, so a convolution or pooling layer is refused by name.
    """
    if hasattr(source, "named_modules"):
        for name, module in source.named_modules():
            if list(module.children()):
                continue
            kind = type(module).__name__
            if kind not in SUPPORTED_TORCH_MODULES:
                raise ValueError(f"{kind} at position {name or '<root>'} is not supported: "
                                 f"fnlearn supports {', '.join(SUPPORTED_TORCH_MODULES)}")
            if kind == "Linear" and module.bias is None:
                raise ValueError(f"Linear at position {name} has no bias; fnlearn's Dense "
                                 "always has one")
        state = source.state_dict()
    else:
        state = dict(source)
    names: list[str] = []
    for key in state:
        prefix, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias"):
            raise ValueError(f"state_dict entry {key!r} is not a Linear weight or bias")
        if prefix not in names:
            names.append(prefix)
    for prefix in names:
        weight, bias = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
        if weight is None or bias is None or weight.ndim != 2 or bias.ndim != 1:
            shapes = {k: tuple(v.shape) for k, v in state.items()
                      if k.rpartition(".")[0] == prefix}
            raise ValueError(f"layer at position {prefix} has parameters {shapes}; only "
                             "Linear (2-D weight and 1-D bias) can be converted")
    return names, state


def _check_pairing(fnlearn_names: list[str], other_names: list[str], framework: str) -> None:
    if len(fnlearn_names) != len(other_names):
        raise ValueError(f"fnlearn has {len(fnlearn_names)} Dense layers {fnlearn_names} but "
                         f"the {framework} model has {len(other_names)}: {other_names}")


def _check_shape(what: str, shape: tuple, expected: tuple) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{what}: shape {tuple(shape)} does not match {tuple(expected)}")


def params_to_torch(params: Params, module) -> dict[str, Any]:
    """A state dict for ``module`` holding fnlearn's Dense parameters (kernels transposed).

    Args:
      params: fnlearn parameters (``{"dense_1": {"kernel", "bias"}, ...}``).
      module: the ``torch.nn.Module`` (or a state dict of it) whose names and shapes to use.

    Returns:
      ``{"1.weight": tensor, "1.bias": tensor, ...}``, float32 tensors ready for
      ``module.load_state_dict``.

    Raises:
      ValueError: the layers do not pair up or a shape differs (the layer is named).
    """
    torch = _import_torch()
    entries = _dense_entries(params)
    names, state = _torch_linear_names(module)
    _check_pairing([n for n, _ in entries], names, "PyTorch")
    converted = {}
    for (name, layer), prefix in zip(entries, names, strict=True):
        kernel, bias = to_numpy(layer["kernel"]), to_numpy(layer["bias"])
        # PyTorch's Linear computes x @ weight.T: its weight is the (out, in) transpose.
        _check_shape(f"{name}/kernel transposed -> {prefix}.weight", kernel.T.shape,
                     state[f"{prefix}.weight"].shape)
        _check_shape(f"{name}/bias -> {prefix}.bias", bias.shape, state[f"{prefix}.bias"].shape)
        converted[f"{prefix}.weight"] = torch.from_numpy(np.array(kernel.T, np.float32, order="C"))
        converted[f"{prefix}.bias"] = torch.from_numpy(np.array(bias, np.float32))
    return converted


def params_from_torch(source, like: Params) -> Params:
    """fnlearn parameters from a torch module or state dict, shaped like ``like``.

    Args:
      source: a ``torch.nn.Module`` or its ``state_dict()``.
      like: fnlearn parameters of the target model (e.g. ``nn.init(model, 0, shape)``):
        they give the names and shapes; their values are not used.

    Returns:
      ``{"dense_1": {"kernel": (in, out), "bias": (out,)}, ...}`` as float32 NumPy arrays.

    Raises:
      ValueError: an unsupported layer, a count mismatch or a shape mismatch, named.
    """
    entries = _dense_entries(like)
    names, state = _torch_linear_names(source)
    _check_pairing([n for n, _ in entries], names, "PyTorch")
    params = {}
    for (name, layer), prefix in zip(entries, names, strict=True):
        kernel = to_numpy(state[f"{prefix}.weight"]).T
        bias = to_numpy(state[f"{prefix}.bias"])
        _check_shape(f"{prefix}.weight transposed -> {name}/kernel", kernel.shape,
                     np.shape(layer["kernel"]))
        _check_shape(f"{prefix}.bias -> {name}/bias", bias.shape, np.shape(layer["bias"]))
        params[name] = {"kernel": np.ascontiguousarray(kernel, np.float32),
                        "bias": bias.astype(np.float32)}
    return params


def _keras_dense_layers(keras_model) -> list:
    """The Keras model's layers that hold weights, in order; each must be a Dense with bias."""
    dense = []
    for position, layer in enumerate(keras_model.layers):
        kind = type(layer).__name__
        if kind not in SUPPORTED_KERAS_LAYERS:
            raise ValueError(f"{kind} at position {position} ({layer.name!r}) is not "
                             f"supported: fnlearn supports {', '.join(SUPPORTED_KERAS_LAYERS)}")
        if kind == "Dense":
            if not layer.use_bias:
                raise ValueError(f"Dense at position {position} ({layer.name!r}) has no bias; "
                                 "fnlearn's Dense always has one")
            dense.append(layer)
        elif layer.weights:
            raise ValueError(f"{kind} at position {position} ({layer.name!r}) has weights; "
                             "only Dense weights can be converted")
    return dense


def params_to_keras(params: Params, keras_model):
    """Sets a Keras model's Dense weights from fnlearn parameters (kernels as they are).

    Args:
      params: fnlearn parameters.
      keras_model: a built Keras model whose weighted layers are Dense.

    Returns:
      ``keras_model``, modified in place.

    Raises:
      ValueError: the layers do not pair up or a shape differs (the layer is named).
    """
    entries = _dense_entries(params)
    dense = _keras_dense_layers(keras_model)
    _check_pairing([n for n, _ in entries], [layer.name for layer in dense], "Keras")
    for (name, layer_params), layer in zip(entries, dense, strict=True):
        kernel, bias = to_numpy(layer_params["kernel"]), to_numpy(layer_params["bias"])
        current_kernel, current_bias = layer.get_weights()
        _check_shape(f"{name}/kernel -> {layer.name}/kernel", kernel.shape, current_kernel.shape)
        _check_shape(f"{name}/bias -> {layer.name}/bias", bias.shape, current_bias.shape)
        layer.set_weights([kernel, bias])
    return keras_model


def params_from_keras(keras_model, like: Params) -> Params:
    """fnlearn parameters from a Keras model's Dense layers, shaped like ``like``.

    Args:
      keras_model: a built Keras model whose weighted layers are Dense.
      like: fnlearn parameters of the target model (names and shapes; values unused).

    Returns:
      ``{"dense_1": {"kernel", "bias"}, ...}`` as float32 NumPy arrays.

    Raises:
      ValueError: an unsupported layer, a count mismatch or a shape mismatch, named.
    """
    entries = _dense_entries(like)
    dense = _keras_dense_layers(keras_model)
    _check_pairing([n for n, _ in entries], [layer.name for layer in dense], "Keras")
    params = {}
    for (name, layer_params), layer in zip(entries, dense, strict=True):
        kernel, bias = layer.get_weights()
        _check_shape(f"{layer.name}/kernel -> {name}/kernel", kernel.shape,
                     np.shape(layer_params["kernel"]))
        _check_shape(f"{layer.name}/bias -> {name}/bias", bias.shape,
                     np.shape(layer_params["bias"]))
        params[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    return params
