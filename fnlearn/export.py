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

A graph model taking a tuple or dict of inputs, or returning a tuple or dict of
outputs, exports as it is: ``exported.call`` takes and returns the same structures,
and ``meta.json`` names every input and output (``fnlearn.signature``) so that the
server answers TF Serving's requests for a multi-input signature.
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
from fnlearn.signature import (
    INPUT_NAME,
    OUTPUT_NAME,
    STRUCTURES,
    ExportInputs,
    ServingSignature,
    TensorInfo,
    batch_problem,
    default_names,
    export_inputs,
    name_problem,
    pack,
    structure_of,
    unpack,
)

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
        y = apply(model, weights, x, state=statistics)[0]
        return tuple(y) if isinstance(y, list) else y

    if not float_inputs:
        return outputs
    top = np.iinfo(dtype).max
    # Back to the exact integers the model was trained on (k / 255 * 255 can land an ulp
    # off k), so the answers are those of the integer export bit for bit.
    return lambda x: outputs(jnp.round(x * top).astype(dtype))


def _check_model_and_state(model: Layer, params, model_state, inputs: ExportInputs) -> None:
    check_model(model)
    check_params(params)
    # Without its statistics a BatchNorm model fails deep inside tracing (KeyError: 'mean').
    hint = missing_state_hint(model, model_state, inputs.packed(inputs.shapes))
    if hint is not None:
        raise ValueError(f"cannot export the model: {hint}")


def _check_float_inputs(float_inputs: bool, inputs: ExportInputs) -> None:
    if not float_inputs:
        return
    if inputs.structure != "single":
        raise ValueError("float_inputs applies to a model taking one input; for a model "
                         f"taking {inputs.names}, scale the values inside the model "
                         "(nn.Normalize) and export the dtype the clients send")
    if inputs.dtypes[0].kind != "u":
        raise ValueError(f"float_inputs scales [0, 1] floats to an unsigned integer dtype "
                         f"(uint8 pixels); got dtype {inputs.dtypes[0]}")


def _batch_polymorphic_spec(inputs: ExportInputs, float_inputs: bool):
    batch, = jax.export.symbolic_shape("b")  # one symbol: every input has the same batch
    dtypes = [np.dtype(np.float32)] if float_inputs else inputs.dtypes
    return inputs.packed([jax.ShapeDtypeStruct((batch, *shape), dtype)
                          for shape, dtype in zip(inputs.shapes, dtypes)])


def _output_names(outputs) -> tuple[str, list[str]]:
    """The structure of ``outputs`` (a pytree of arrays) and their names in flattening order."""
    tree = jax.tree.structure(outputs)
    positions = jax.tree.unflatten(tree, list(range(tree.num_leaves)))
    structure, keys = structure_of(positions, "the model's outputs")
    flat = unpack(structure, keys, positions)
    if not all(isinstance(position, int) for position in flat):
        raise ValueError(f"cannot export the model: its outputs must be one array, or a tuple "
                         f"or dict of arrays, not a nested structure "
                         f"{jax.tree.unflatten(tree, ['array'] * tree.num_leaves)}")
    names = default_names(structure, keys, "output")
    return structure, [name for _, name in sorted(zip(flat, names))]


def _meta(exported: jax.export.Exported, inputs: ExportInputs, float_inputs: bool) -> dict:
    output_structure, output_names = _output_names(
        jax.tree.unflatten(exported.out_tree, exported.out_avals))
    named = [TensorInfo(name, tuple(int(d) for d in aval.shape[1:]), np.dtype(aval.dtype))
             for names, avals in ((inputs.names, exported.in_avals),
                                  (output_names, exported.out_avals))
             for name, aval in zip(names, avals)]
    single = inputs.structure == output_structure == "single"
    meta = {"format": FORMAT, "version": 1 if single else 2}
    if inputs.structure == "single":
        meta.update(input_shape=list(inputs.shapes[0]), dtype=str(inputs.dtypes[0]))
    meta["platforms"] = list(exported.platforms)
    if output_structure == "single":
        meta["output"] = str(exported.out_avals[0])
    meta.update(input_structure=inputs.structure, output_structure=output_structure,
                inputs=[info.to_json() for info in named[:len(inputs.names)]],
                outputs=[info.to_json() for info in named[len(inputs.names):]])
    if float_inputs:
        meta.update(dtype="float32", input_range=[0.0, 1.0], model_dtype=str(inputs.dtypes[0]))
    return meta


def export_model(model: Layer, params, input_shape, dtype, path: str | Path, *,
                 model_state=None, platforms: Sequence[str] = ("cpu", "cuda"),
                 float_inputs: bool = False, policy: str | Policy | None = None) -> Path:
    """Serializes ``model`` with ``params`` (and state) baked in to a file at ``path``.

    The file appears complete or not at all (written under a hidden name beside it,
    then renamed), so ``path=BASE / "3" / "model.fnx"`` publishes version 3 to a server
    watching ``BASE``.

    Args:
      model: the model (``fnlearn.nn`` layer).
      params: its trained parameters.
      input_shape: per-example input shape (the batch size stays symbolic, one for all
        inputs); for a graph model taking a dict of inputs, a dict ``{name: shape}``; for
        one taking a tuple, a tuple of shapes (its inputs are then named ``input_0``,
        ``input_1``, ...). A tuple or dict of outputs is named by position (``output_0``,
        ...) or key; a lone input and output are ``inputs`` and ``outputs``.
      dtype: input dtype, e.g. ``np.uint8`` for raw pixels; one for all inputs, or a dict
        or tuple matching ``input_shape``.
      path: file to write.
      model_state: its non-trainable state (``state.model_state``), if it has any;
        inference uses it as it is (BatchNorm's running statistics).
      platforms: platforms the file can run on (lowered for each, no device needed).
      float_inputs: the file takes float32 values in ``[0, 1]`` instead of ``dtype``
        (an unsigned integer dtype), each the integer divided by the dtype's maximum:
        ``pixels / 255.0``, as TensorFlow's tutorial clients send for uint8 pixels. They
        are scaled back and rounded to the integers the model takes, so the answers are
        the integer export's bit for bit; values outside ``[0, 1]`` are refused on load
        (``load_exported``, the server). A model taking one input only.
      policy: a precision policy to export the model under (``"mixed_bfloat16"``:
        ``fnlearn.nn.with_policy``); the outputs are float32 either way.

    Returns:
      The path written (its folder is created if missing).

    Raises:
      ValueError: the model cannot be traced for this input, returns nested outputs, or
        ``float_inputs`` with several inputs or a dtype that is not an unsigned integer.
    """
    inputs = export_inputs(input_shape, dtype)
    _check_model_and_state(model, params, model_state, inputs)
    _check_float_inputs(float_inputs, inputs)
    model = model if policy is None else with_policy(model, policy)
    spec = _batch_polymorphic_spec(inputs, float_inputs)
    function = _inference_function(model, params, model_state, inputs.dtypes[0], float_inputs)
    try:
        exported = jax.export.export(jax.jit(function), platforms=tuple(platforms))(spec)
    except Exception as error:  # noqa: BLE001 - re-raised with the shapes that caused it
        raise ValueError(f"cannot export the model for inputs of {inputs.described()}: "
                         f"{error}") from error
    meta = _meta(exported, inputs, float_inputs)
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


def _check_input(x, aval, input_range=None, where: str = "inputs") -> np.ndarray:
    x = np.asarray(x)
    want = np.dtype(aval.dtype)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TypeError(f"{where} must be a numeric array, got dtype {x.dtype}")
    expected = ("batch", *aval.shape[1:])
    if x.ndim != len(aval.shape) or tuple(x.shape[1:]) != tuple(aval.shape[1:]):
        raise ValueError(f"{where} of shape {x.shape} do not fit the exported model, which "
                         f"takes shape {expected}")
    if x.shape[0] == 0:
        raise ValueError(f"{where} are empty: the batch has no examples")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"{where} contain NaN or inf (first at index {bad})")
    if input_range is not None and ((x < input_range[0]) | (x > input_range[1])).any():
        bad = tuple(int(i) for i in np.argwhere((x < input_range[0]) | (x > input_range[1]))[0])
        raise ValueError(f"{where} hold {x[bad]} at index {bad}, outside the exported model's "
                         f"input range [{input_range[0]}, {input_range[1]}]")
    both_float = np.issubdtype(x.dtype, np.floating) and np.issubdtype(want, np.floating)
    if not (np.can_cast(x.dtype, want, "safe") or both_float):
        raise TypeError(f"{where} have dtype {x.dtype}; the exported model takes {want} and "
                        "the conversion could change values")
    return x.astype(want, copy=False)


def _named_inputs(x, signature: ServingSignature, avals) -> list[np.ndarray]:
    """``x`` (a tuple or dict) as one checked array per input, in flattening order."""
    structure, names = signature.input_structure, signature.input_names
    given, _ = structure_of(x, "inputs")
    if given != structure:
        kind = "a dict of inputs" if structure == "dict" else "a tuple of inputs"
        raise TypeError(f"the exported model takes {kind} {list(names)}, got "
                        f"{type(x).__name__}")
    if structure == "tuple":
        if len(x) != len(names):
            raise ValueError(f"the exported model takes a tuple of {len(names)} inputs, got "
                             f"{len(x)}")
        keys = list(range(len(names)))
    else:
        problem = name_problem(list(x), names)
        if problem is not None:
            raise ValueError(f"inputs do not match the exported model: {problem}")
        keys = list(names)
    arrays = [_check_input(value, aval, where=f"inputs[{key!r}]")
              for key, value, aval in zip(keys, unpack(structure, keys, x), avals)]
    problem = batch_problem({key: len(a) for key, a in zip(keys, arrays)}, "inputs[{name!r}]")
    if problem is not None:
        raise ValueError(problem)
    return arrays


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


def _signature(path: Path, exported: jax.export.Exported, meta: dict) -> ServingSignature:
    """The named inputs and outputs (files from before names were recorded: one of each)."""
    structures = (meta.get("input_structure", "single"), meta.get("output_structure", "single"))
    entries = (meta.get("inputs", [{"name": INPUT_NAME}]),
               meta.get("outputs", [{"name": OUTPUT_NAME}]))
    avals = (exported.in_avals, exported.out_avals)
    if any(s not in STRUCTURES for s in structures) or any(
            len(e) != len(a) for e, a in zip(entries, avals)):
        raise ExportError(f"{path}: meta.json's inputs and outputs do not match the exported "
                          f"module")
    inputs, outputs = ([TensorInfo(str(entry["name"]), tuple(int(d) for d in aval.shape[1:]),
                                   np.dtype(aval.dtype)) for entry, aval in zip(e, a)]
                       for e, a in zip(entries, avals))
    return ServingSignature(tuple(inputs), tuple(outputs), *structures)


def load_exported(path: str | Path) -> Callable:
    """Loads a file written by ``export_model``; returns ``predict(x)``.

    The returned function checks ``x`` (rank, per-example shape, dtype, NaN/inf)
    before running, and accepts any batch size. For a model taking a tuple or dict of
    inputs ``x`` is the same structure, each input checked alike (the error names it),
    a missing or unknown name refused, and the inputs' batch sizes must agree. It
    returns an ``np.ndarray``, or the model's tuple or dict of them. Its ``exported``
    attribute is the ``jax.export.Exported``, ``meta`` the file's metadata and
    ``signature`` the named inputs and outputs (``fnlearn.signature.ServingSignature``).

    Raises:
      FileNotFoundError: no file at ``path``.
      ExportError: the file is corrupt, truncated or not an fnlearn export.
    """
    path = Path(path)
    exported, meta = _read(path)
    signature = _signature(path, exported, meta)
    aval = exported.in_avals[0]

    def predict(x):
        if signature.input_structure == "single":
            x = _check_input(x, aval, meta.get("input_range"))
        else:
            x = pack(signature.input_structure, signature.input_names,
                     _named_inputs(x, signature, exported.in_avals))
        outputs = exported.call(x)
        if signature.output_structure == "single":
            return np.asarray(outputs)
        arrays = [np.asarray(y) for y in unpack(signature.output_structure,
                                                signature.output_names, outputs)]
        return pack(signature.output_structure, signature.output_names, arrays)

    predict.exported, predict.meta, predict.signature = exported, meta, signature
    return predict


def export_saved_model(model: Layer, params, input_shape, dtype,
                       directory: str | Path, *, model_state=None,
                       platforms: Sequence[str] = ("cpu", "cuda"),
                       float_inputs: bool = False,
                       policy: str | Policy | None = None) -> Path:
    """Writes ``model`` with ``params`` baked in as a TensorFlow SavedModel (for TF Serving).

    The serving signature ``serving_default`` takes ``inputs`` of shape
    ``(None, *input_shape)`` and returns ``outputs``; a model with a tuple or dict of
    inputs or outputs takes and returns them by the names ``export_model`` gives them
    (``image``, ``input_0``, ``output_1``...). Needs TensorFlow.

    Args:
      model, params, input_shape, dtype, model_state, platforms, float_inputs, policy: as
        for ``export_model``.
      directory: the SavedModel directory to create.

    Returns:
      The directory written.
    """
    inputs = export_inputs(input_shape, dtype)
    _check_model_and_state(model, params, model_state, inputs)
    _check_float_inputs(float_inputs, inputs)
    model = model if policy is None else with_policy(model, policy)
    import tensorflow as tf
    from jax.experimental import jax2tf

    function = _inference_function(model, params, model_state, inputs.dtypes[0], float_inputs)
    output_structure, output_names = _output_names(
        jax.eval_shape(function, _batch_polymorphic_spec(inputs, float_inputs)))
    polymorphic = inputs.packed([f"(b, {', '.join(map(str, shape))})" if shape else "(b,)"
                                 for shape in inputs.shapes])
    # Inference only: no gradient function to save, so none to warn about on load.
    converted = jax2tf.convert(function, polymorphic_shapes=[polymorphic], with_gradient=False,
                               native_serialization_platforms=tuple(platforms))
    dtypes = [np.dtype(np.float32)] if float_inputs else inputs.dtypes
    signature = [tf.TensorSpec((None, *shape), tf.as_dtype(dtype), name=name)
                 for name, shape, dtype in zip(inputs.names, inputs.shapes, dtypes)]

    def serve(*arrays):
        outputs = converted(inputs.packed(list(arrays)))
        return dict(zip(output_names, unpack(output_structure, output_names, outputs)))

    module = tf.Module()
    module.serve = tf.function(serve, autograph=False, input_signature=signature)
    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    return Path(directory)
