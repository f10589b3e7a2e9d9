"""Export a trained model's inference function for serving without the model's Python code.

``export_model`` traces ``model.apply`` with the parameters baked in as constants
and serializes it with ``jax.export``: StableHLO plus its calling convention, for
a symbolic batch size ``b``, so one file serves any batch size. The file is a zip
archive of two members, ``model.jaxexport`` (the bytes of ``Exported.serialize()``)
and ``meta.json``; the zip's CRC-32 per member is why: a flipped byte inside the
serialized module can still deserialize and silently change a weight, and the
CRC refuses it instead. Any JAX installation can load it::

    exported = jax.export.deserialize(zipfile.ZipFile(path).read("model.jaxexport"))
    outputs = exported.call(inputs)

``load_exported`` does that and checks its inputs first. ``export_saved_model``
converts the same function to a TensorFlow SavedModel (``jax2tf``) for TF Serving.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.checks import check_model, check_params, missing_state_hint
from fnlearn.nn.core import Layer, apply
from fnlearn.nn.policy import Policy, with_policy

FORMAT = "fnlearn-export"
MODULE_MEMBER = "model.jaxexport"
META_MEMBER = "meta.json"


class ExportError(ValueError):
    """An export file is corrupt, truncated or not an fnlearn export."""


def _inference_function(model: Layer, params, model_state=None, dtype=None,
                        float_inputs: bool = False) -> Callable:
    params, model_state = jax.tree.map(np.asarray, (params, model_state or {}))

    def outputs(x):
        # Behind the barrier the weights are not constants to XLA's simplifier, which would
        # otherwise rewrite some products of them (a Dense after a Concatenate becomes two
        # products and a sum) and round differently from fnlearn.predict.
        weights, statistics = jax.lax.optimization_barrier((params, model_state))
        return apply(model, weights, x, state=statistics)[0]

    if not float_inputs:
        return outputs
    top = np.iinfo(dtype).max
    # Back to the exact integers the model was trained on (k / 255 * 255 can land an ulp
    # off k), so the answers are those of the integer export bit for bit.
    return lambda x: outputs(jnp.round(x * top).astype(dtype))


def _check_model_and_state(model: Layer, params, model_state, input_shape) -> None:
    check_model(model)
    check_params(params)
    # Without its statistics a BatchNorm model fails deep inside tracing (KeyError: 'mean').
    hint = missing_state_hint(model, model_state, tuple(int(d) for d in input_shape))
    if hint is not None:
        raise ValueError(f"cannot export the model: {hint}")


def _check_float_inputs(float_inputs: bool, dtype) -> None:
    if float_inputs and np.dtype(dtype).kind != "u":
        raise ValueError(f"float_inputs scales [0, 1] floats to an unsigned integer dtype "
                         f"(uint8 pixels); got dtype {np.dtype(dtype)}")


def _batch_polymorphic_spec(input_shape: Sequence[int], dtype) -> jax.ShapeDtypeStruct:
    dims = ", ".join(["b", *(str(int(d)) for d in input_shape)])
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), np.dtype(dtype))


def _signature_dtype(dtype, float_inputs: bool) -> np.dtype:
    return np.dtype(np.float32) if float_inputs else np.dtype(dtype)


def export_model(model: Layer, params, input_shape: Sequence[int], dtype, path: str | Path, *,
                 model_state=None, platforms: Sequence[str] = ("cpu", "cuda"),
                 float_inputs: bool = False, policy: str | Policy | None = None) -> Path:
    """Serializes ``model`` with ``params`` (and state) baked in to a file at ``path``.

    The file appears complete or not at all (written under a hidden name beside it,
    then renamed), so ``path=BASE / "3" / "model.fnx"`` publishes version 3 to a server
    watching ``BASE``.

    Args:
      model: the model (``fnlearn.nn`` layer).
      params: its trained parameters.
      input_shape: per-example input shape (the batch size stays symbolic).
      dtype: input dtype, e.g. ``np.uint8`` for raw pixels.
      path: file to write.
      model_state: its non-trainable state (``state.model_state``), if it has any;
        inference uses it as it is (BatchNorm's running statistics).
      platforms: platforms the file can run on (lowered for each, no device needed).
      float_inputs: the file takes float32 values in ``[0, 1]`` instead of ``dtype``
        (an unsigned integer dtype), each the integer divided by the dtype's maximum:
        ``pixels / 255.0``, as TensorFlow's tutorial clients send for uint8 pixels. They
        are scaled back and rounded to the integers the model takes, so the answers are
        the integer export's bit for bit; values outside ``[0, 1]`` are refused on load
        (``load_exported``, the server).
      policy: a precision policy to export the model under (``"mixed_bfloat16"``:
        ``fnlearn.nn.with_policy``); the outputs are float32 either way.

    Returns:
      The path written (its folder is created if missing).

    Raises:
      ValueError: the model cannot be traced for this input, or ``float_inputs`` with a
        dtype that is not an unsigned integer.
    """
    _check_model_and_state(model, params, model_state, input_shape)
    _check_float_inputs(float_inputs, dtype)
    model = model if policy is None else with_policy(model, policy)
    spec = _batch_polymorphic_spec(input_shape, _signature_dtype(dtype, float_inputs))
    function = _inference_function(model, params, model_state, dtype, float_inputs)
    try:
        exported = jax.export.export(jax.jit(function), platforms=tuple(platforms))(spec)
    except Exception as error:  # noqa: BLE001 - re-raised with the shapes that caused it
        raise ValueError(f"cannot export the model for inputs of per-example shape "
                         f"{tuple(input_shape)} and dtype {np.dtype(dtype)}: {error}") from error
    meta = {"format": FORMAT, "version": 1, "input_shape": list(map(int, input_shape)),
            "dtype": str(np.dtype(dtype)), "platforms": list(exported.platforms),
            "output": str(exported.out_avals[0])}
    if float_inputs:
        meta.update(dtype="float32", input_range=[0.0, 1.0], model_dtype=str(np.dtype(dtype)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file, zipfile.ZipFile(
                file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MODULE_MEMBER, bytes(exported.serialize()))
            archive.writestr(META_MEMBER, json.dumps(meta, indent=1))
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


def _check_input(x, aval, input_range=None) -> np.ndarray:
    x = np.asarray(x)
    want = np.dtype(aval.dtype)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TypeError(f"inputs must be a numeric array, got dtype {x.dtype}")
    expected = ("batch", *aval.shape[1:])
    if x.ndim != len(aval.shape) or tuple(x.shape[1:]) != tuple(aval.shape[1:]):
        raise ValueError(f"inputs of shape {x.shape} do not fit the exported model, which takes "
                         f"shape {expected}")
    if x.shape[0] == 0:
        raise ValueError("inputs are empty: the batch has no examples")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"inputs contain NaN or inf (first at index {bad})")
    if input_range is not None and ((x < input_range[0]) | (x > input_range[1])).any():
        bad = tuple(int(i) for i in np.argwhere((x < input_range[0]) | (x > input_range[1]))[0])
        raise ValueError(f"inputs hold {x[bad]} at index {bad}, outside the exported model's "
                         f"input range [{input_range[0]}, {input_range[1]}]")
    both_float = np.issubdtype(x.dtype, np.floating) and np.issubdtype(want, np.floating)
    if not (np.can_cast(x.dtype, want, "safe") or both_float):
        raise TypeError(f"inputs have dtype {x.dtype}; the exported model takes {want} and "
                        "the conversion could change values")
    return x.astype(want, copy=False)


def _read(path: Path) -> tuple[jax.export.Exported, dict]:
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read(META_MEMBER))
            serialized = archive.read(MODULE_MEMBER)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - damaged bytes surface as many types (zlib.error)
        raise ExportError(f"{path} is corrupt, truncated or not an fnlearn export: "
                          f"{type(error).__name__}: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ExportError(f"{path} is not an fnlearn export (format {found!r})")
    try:
        return jax.export.deserialize(bytearray(serialized)), meta
    except Exception as error:  # noqa: BLE001
        raise ExportError(f"{path}: cannot deserialize the exported module: {error}") from error


def load_exported(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """Loads a file written by ``export_model``; returns ``predict(x) -> np.ndarray``.

    The returned function checks ``x`` (rank, per-example shape, dtype, NaN/inf)
    before running, and accepts any batch size. Its ``exported`` attribute is the
    ``jax.export.Exported``, ``meta`` the file's metadata.

    Raises:
      FileNotFoundError: no file at ``path``.
      ExportError: the file is corrupt, truncated or not an fnlearn export.
    """
    path = Path(path)
    exported, meta = _read(path)
    aval = exported.in_avals[0]

    def predict(x) -> np.ndarray:
        return np.asarray(exported.call(_check_input(x, aval, meta.get("input_range"))))

    predict.exported, predict.meta = exported, meta
    return predict


def export_saved_model(model: Layer, params, input_shape: Sequence[int], dtype,
                       directory: str | Path, *, model_state=None,
                       platforms: Sequence[str] = ("cpu", "cuda"),
                       float_inputs: bool = False,
                       policy: str | Policy | None = None) -> Path:
    """Writes ``model`` with ``params`` baked in as a TensorFlow SavedModel (for TF Serving).

    The serving signature ``serving_default`` takes ``inputs`` of shape
    ``(None, *input_shape)`` and returns ``outputs``. Needs TensorFlow.

    Args:
      model, params, input_shape, dtype, model_state, platforms, float_inputs, policy: as
        for ``export_model``.
      directory: the SavedModel directory to create.

    Returns:
      The directory written.
    """
    _check_model_and_state(model, params, model_state, input_shape)
    _check_float_inputs(float_inputs, dtype)
    model = model if policy is None else with_policy(model, policy)
    import tensorflow as tf
    from jax.experimental import jax2tf

    polymorphic = "(b, " + ", ".join(str(int(d)) for d in input_shape) + ")"
    # Inference only: no gradient function to save, so none to warn about on load.
    converted = jax2tf.convert(_inference_function(model, params, model_state, dtype,
                                                   float_inputs),
                               polymorphic_shapes=[polymorphic], with_gradient=False,
                               native_serialization_platforms=tuple(platforms))
    signature = tf.TensorSpec((None, *map(int, input_shape)),
                              tf.as_dtype(_signature_dtype(dtype, float_inputs)), name="inputs")
    module = tf.Module()
    module.serve = tf.function(lambda inputs: {"outputs": converted(inputs)}, autograph=False,
                               input_signature=[signature])
    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    return Path(directory)
