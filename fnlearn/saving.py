"""Whole-model save and load: the architecture as JSON, the training state with Orbax.

Keras's ``model.save("m.keras")`` / ``keras.models.load_model``, PyTorch's
``torch.save(model)``, without pickle: ``save_model(path, model, state, optimizer)``
writes a directory that ``load_model(path)`` turns back into ``(model, state)`` in a
process that has none of the model's code, and training continues from it bit for bit.

The directory holds::

    model.json     {"format": "fnlearn-model", "version": 1,
                    "architecture": ... (fnlearn.architecture),
                    "optimizer": {"name": "adam"} | {"preset": "torch_sgd",
                                 "arguments": {...}} | null,
                    "state": the structure, shapes and dtypes of params, model_state,
                             step, epoch and key}
    checkpoint/    the TrainState (fnlearn.checkpoint: Orbax, digests, atomic commit)

The optimizer is recorded when it can be rebuilt from its name: one of Keras's names
(``"adam"``), one of ``fnlearn.optim``'s presets at its defaults (``keras_adam()``),
or a preset with arguments written ``("torch_sgd", {"lr": 0.1})``. Any other Optax
transformation cannot be written as JSON: its state is saved all the same, and
``load_model(path, optimizer=...)`` takes the optimizer back from you.

The directory is written under a temporary name and renamed when complete, so a save
that is killed never leaves a half-written model under ``path``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import optax

from fnlearn import checks, optim
from fnlearn.architecture import (
    SavingError,
    decode_value,
    encode_value,
    model_from_dict,
    model_from_json,
    model_to_dict,
    model_to_json,
)
from fnlearn.checkpoint import describe_structure, restore_checkpoint, save_checkpoint
from fnlearn.nn.core import Layer
from fnlearn.state import TrainState

__all__ = ["SavingError", "load_model", "load_optimizer", "model_from_json", "model_to_json",
           "save_model"]

FORMAT = "fnlearn-model"
VERSION = 1
MODEL_FILE = "model.json"
CHECKPOINT = "checkpoint"
# fnlearn.optim's presets, by name: the only functions a saved record may call.
PRESETS = ("keras_adam", "torch_adam", "keras_sgd", "torch_sgd", "keras_rmsprop",
           "torch_adadelta")


def _optimizer_record(optimizer) -> dict | None:
    """``optimizer`` as JSON data that rebuilds it, or None when it cannot be written."""
    if optimizer is None:
        return None
    if isinstance(optimizer, str):
        optim.get_optimizer(optimizer)  # refuses an unknown name
        return {"name": optimizer.lower()}
    if isinstance(optimizer, tuple) and len(optimizer) == 2 and isinstance(optimizer[0], str):
        preset, arguments = optimizer
        if preset not in PRESETS or not isinstance(arguments, dict):
            raise ValueError(f"optimizer ({preset!r}, ...) must name one of fnlearn.optim's "
                             f"presets {list(PRESETS)} and give its arguments as a dict")
        try:
            return {"preset": preset, "arguments": encode_value(arguments)["dict"]}
        except TypeError as error:
            raise SavingError(f"optimizer {preset} arguments: {error}; save with the Optax "
                              "optimizer itself and pass it to load_model(path, "
                              "optimizer=...)") from error
    checks.resolve_optimizer(optimizer)  # refuses what is not an optimizer
    for name in sorted(optim.OPTIMIZERS):
        if optim.get_optimizer(name) is optimizer:
            return {"name": name}
    for preset in PRESETS:
        try:
            if getattr(optim, preset)() is optimizer:  # presets are cached: one object
                return {"preset": preset, "arguments": []}
        except TypeError:  # a preset without defaults for every argument
            continue
    return None


def _rebuilt_optimizer(record: dict) -> optax.GradientTransformation:
    if "name" in record:
        return optim.get_optimizer(record["name"])
    if record.get("preset") not in PRESETS:
        raise SavingError(f"{MODEL_FILE} names an optimizer fnlearn does not know: {record!r}")
    arguments = decode_value({"dict": record["arguments"]})
    return getattr(optim, record["preset"])(**arguments)


def _resolved(optimizer) -> optax.GradientTransformation:
    """An optimizer given as save_model and load_model take it, built."""
    if isinstance(optimizer, tuple) and len(optimizer) == 2 and isinstance(optimizer[0], str):
        return _rebuilt_optimizer(_optimizer_record(optimizer))
    return checks.resolve_optimizer(optimizer)


def _shapes(tree, where: str):
    """The structure of a pytree of arrays as JSON data: ``{"array": [shape, dtype]}`` leaves."""
    if tree is None:
        return None
    if type(tree) is dict:
        return {"dict": [[key, _shapes(value, f"{where}[{key!r}]")] for key, value in tree.items()]}
    if type(tree) in (list, tuple):
        return {type(tree).__name__: [_shapes(v, f"{where}[{i}]") for i, v in enumerate(tree)]}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return {"array": [list(tree.shape), str(tree.dtype)]}
    raise SavingError(f"{where} holds a {type(tree).__name__}, which {MODEL_FILE} cannot "
                      "describe: parameters and model state must be dicts, lists and tuples "
                      "of arrays")


def _abstract(data, sharding):
    """The ``jax.ShapeDtypeStruct`` tree ``_shapes`` described, placed by ``sharding``."""
    if data is None:
        return None
    (tag, inner), = data.items()
    if tag == "array":
        return jax.ShapeDtypeStruct(tuple(inner[0]), inner[1], sharding=sharding)
    if tag == "dict":
        return {key: _abstract(value, sharding) for key, value in inner}
    values = [_abstract(value, sharding) for value in inner]
    return tuple(values) if tag == "tuple" else values


def _check_optimizer(optimizer, state: TrainState) -> None:
    expected = describe_structure(jax.eval_shape(optimizer.init, state.params))
    if expected != describe_structure(state.opt_state):
        raise SavingError("optimizer does not match state.opt_state (its state has another "
                          "structure): pass the optimizer the state was trained with")


def save_model(path: str | os.PathLike, model: Layer, state: TrainState, optimizer=None, *,
               overwrite: bool = False) -> Path:
    """Saves ``model``'s architecture and its training ``state`` in the directory ``path``.

    Args:
      path: the directory to write (it must not exist, unless ``overwrite``).
      model: the model, built from fnlearn.nn (and your own ``@fnlearn.nn.constructor``
        layers, which ``load_model`` then needs in ``custom_layers``).
      state: its ``TrainState`` (from ``fit`` or ``init_state``).
      optimizer: what ``state`` was trained with: a Keras name (``"adam"``), a preset
        with its arguments (``("torch_sgd", {"lr": 0.1})``), or an Optax transformation
        (recorded if it is a preset at its defaults, such as ``fnlearn.optim.keras_adam()``;
        otherwise ``load_model`` needs it passed back). None records none.
      overwrite: replace an earlier saved model at ``path``.

    Returns:
      ``path``, complete.

    Raises:
      SavingError: a layer that cannot be written (named), an optimizer whose state
        is not ``state.opt_state``'s, or ``path`` holding something else than a model.
      FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState (from fit or init_state), got "
                        f"{type(state).__name__}")
    architecture = model_to_dict(model)
    record = _optimizer_record(optimizer)
    if optimizer is not None:
        _check_optimizer(_resolved(optimizer), state)
    if jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key):
        state = state._replace(key=jax.random.key_data(state.key))
    described = {name: _shapes(getattr(state, name), f"state.{name}")
                 for name in ("params", "model_state", "step", "epoch", "key")}
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass overwrite=True to replace it")
    if path.exists() and not (path / MODEL_FILE).is_file():
        raise SavingError(f"{path} exists and is not a saved model: not replacing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()  # the umask's permissions, as any directory the user makes
    try:
        save_checkpoint(staging / CHECKPOINT, state, keep=1)
        (staging / MODEL_FILE).write_text(json.dumps(
            {"format": FORMAT, "version": VERSION, "architecture": architecture,
             "optimizer": record, "state": described}, indent=1))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads((path / MODEL_FILE).read_text())
    except FileNotFoundError:
        raise SavingError(f"{path} is not a saved model: it has no {MODEL_FILE} (save it "
                          "with fnlearn.save_model)") from None
    except json.JSONDecodeError as error:
        raise SavingError(f"{path / MODEL_FILE} is corrupt: {error}") from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise SavingError(f"{path / MODEL_FILE} is not an fnlearn model file")
    if saved.get("version") != VERSION:
        raise SavingError(f"{path / MODEL_FILE} has version {saved.get('version')!r}; this "
                          f"fnlearn reads version {VERSION}")
    return saved


def load_optimizer(path: str | os.PathLike) -> optax.GradientTransformation:
    """The optimizer a saved model recorded, rebuilt (what to pass to ``fit`` to continue).

    Raises:
      SavingError: ``path`` is not a saved model, or it recorded no optimizer.
    """
    path = Path(path)
    record = _read(path)["optimizer"]
    if record is None:
        raise SavingError(
            f"{path} was saved without a record of its optimizer (none was given to "
            "save_model, or an Optax transformation other than fnlearn.optim's presets, "
            "which JSON cannot hold): pass the optimizer it was trained with, "
            "load_model(path, optimizer=...)")
    return _rebuilt_optimizer(record)


def load_model(path: str | os.PathLike, *, optimizer=None,
               custom_layers=None) -> tuple[Layer, TrainState]:
    """The model and training state ``save_model`` wrote, with no model code needed.

    Args:
      path: the saved model's directory.
      optimizer: the optimizer the state was trained with, as ``save_model`` takes it;
        None uses the one recorded (``load_optimizer``).
      custom_layers: your own layer constructors the model uses
        (``@fnlearn.nn.constructor`` functions): a list, or a dict by name (Keras's
        ``custom_objects``).

    Returns:
      ``(model, state)``: continue with ``fit(model, ..., optimizer=load_optimizer(path),
      state=state)``, or predict with ``state.params`` and ``state.model_state``.

    Raises:
      SavingError: not a saved model; a layer whose constructor is not given (named,
        with the ``custom_layers`` to pass); no optimizer recorded and none given.
      CheckpointError: the state's files are damaged, or ``optimizer`` is not the one
        the state was trained with.
    """
    path = Path(path)
    saved = _read(path)
    model = model_from_dict(saved["architecture"], custom_layers)
    optimizer = load_optimizer(path) if optimizer is None else _resolved(optimizer)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    parts = {name: _abstract(value, sharding) for name, value in saved["state"].items()}
    opt_state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        jax.eval_shape(optimizer.init, parts["params"]))
    template = TrainState(parts["params"], opt_state, parts["model_state"], parts["step"],
                          parts["epoch"], parts["key"])
    state, _, _ = restore_checkpoint(path / CHECKPOINT, template)
    return model, state
