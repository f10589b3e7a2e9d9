"""Named inputs and outputs of an exported model, as a TensorFlow Serving signature lists them.

A model takes one array, or a tuple or dict of arrays, and returns one of those. An
export names each array: a dict's keys, ``input_0``, ``input_1``, ... for a tuple,
``inputs`` for a lone array (``output_0``, ... and ``outputs`` likewise). The names are
listed in the order ``jax.export`` flattens the structure (a dict's keys sorted), so
the n-th name is the n-th of ``Exported.in_avals`` (or ``out_avals``).

``fnlearn.export`` writes and reads these; the server (``fnlearn.serve``) decodes
requests and writes answers by them. NumPy only: no JAX, no server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: The name of a model's input when it takes one array (TF Serving's default).
INPUT_NAME = "inputs"
#: The name of a model's output when it returns one array (TF Serving's default).
OUTPUT_NAME = "outputs"
#: How a model takes its inputs or returns its outputs: one array, a tuple, a dict.
STRUCTURES = ("single", "tuple", "dict")


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output: its name, per-example shape (no batch axis) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def to_json(self) -> dict:
        """The entry of ``meta.json``: ``{"name", "shape", "dtype"}``."""
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype)}


@dataclass(frozen=True)
class ServingSignature:
    """A model's named inputs and outputs, in flattening order, and their structures.

    Attributes:
      inputs, outputs: one ``TensorInfo`` per array.
      input_structure, output_structure: ``"single"``, ``"tuple"`` or ``"dict"``.
    """

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    input_structure: str = "single"
    output_structure: str = "single"

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs' names, in flattening order."""
        return tuple(info.name for info in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The outputs' names, in flattening order."""
        return tuple(info.name for info in self.outputs)


def structure_of(value, what: str) -> tuple[str, list]:
    """``(structure, keys)`` of a lone value, a tuple or list, or a dict of str keys.

    ``keys`` are the dict's keys, or ``range(len(value))`` for a tuple, ``[None]`` alone.

    Raises:
      TypeError: a dict with keys that are not strings.
    """
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{what} must be keyed by strings (their names), got keys "
                            f"{list(value)}")
        return "dict", list(value)
    if isinstance(value, list | tuple):
        return "tuple", list(range(len(value)))
    return "single", [None]


def default_names(structure: str, keys, role: str) -> list[str]:
    """The names of ``keys`` (``structure_of``) for ``role`` ``"input"`` or ``"output"``."""
    if structure == "single":
        return [INPUT_NAME if role == "input" else OUTPUT_NAME]
    if structure == "tuple":
        return [f"{role}_{key}" for key in keys]
    return list(keys)


def pack(structure: str, names, values):
    """``values`` (one per name) in ``structure``: the lone value, a tuple, or a dict by name."""
    if structure == "single":
        return values[0]
    if structure == "tuple":
        return tuple(values)
    return dict(zip(names, values))


def unpack(structure: str, names, value) -> list:
    """The inverse of ``pack``: one value per name, in ``names``' order (unchecked)."""
    if structure == "single":
        return [value]
    if structure == "tuple":
        return list(value)
    return [value[name] for name in names]


def name_problem(given, expected) -> str | None:
    """What is wrong with the input names ``given`` for a model taking ``expected``, or None.

    For example ``"missing input 'meta'; the model takes inputs ['image', 'meta']"``.
    """
    missing = [name for name in expected if name not in given]
    unknown = sorted(str(name) for name in given if name not in expected)
    if not (missing or unknown):
        return None
    parts = ([f"missing {_plural('input', missing)}"] if missing else []) + (
        [f"unknown {_plural('input', unknown)}"] if unknown else [])
    return f"{' and '.join(parts)}; the model takes inputs {list(expected)}"


def _plural(word: str, names: list) -> str:
    return f"{word} {names[0]!r}" if len(names) == 1 else f"{word}s {names}"


def batch_problem(sizes: dict[str, int], where: str = "input {name!r}") -> str | None:
    """Which inputs disagree on the batch size (``{name: rows}``), or None if all agree."""
    first, rows = next(iter(sizes.items()))
    for name, other in sizes.items():
        if other != rows:
            return (f"{where.format(name=name)} has {other} examples but "
                    f"{where.format(name=first)} has {rows}: every input must have the same "
                    f"batch size")
    return None


class ExportInputs(NamedTuple):
    """The inputs ``export_model`` is given, one entry per input in flattening order."""

    structure: str
    names: list[str]
    keys: list  # a dict's keys, a tuple's positions, [None] alone
    shapes: list[tuple[int, ...]]
    dtypes: list[np.dtype]

    def packed(self, values):
        """``values``, one per input, in the model's input structure."""
        return pack(self.structure, self.keys, values)

    def described(self) -> str:
        """The shapes and dtypes, for messages."""
        if self.structure == "single":
            return f"per-example shape {self.shapes[0]} and dtype {self.dtypes[0]}"
        return (f"per-example shapes {self.packed(self.shapes)} and dtypes "
                f"{self.packed([str(d) for d in self.dtypes])}")


def _is_shape(value) -> bool:
    return not (isinstance(value, dict) or (
        isinstance(value, list | tuple) and value and all(
            isinstance(item, list | tuple) for item in value)))


def export_inputs(input_shape, dtype) -> ExportInputs:
    """``export_model``'s ``input_shape`` and ``dtype``, one entry per input.

    ``input_shape`` is one per-example shape, a dict of them, or a tuple or list of them;
    ``dtype`` one dtype for all, or a matching dict or tuple.

    Raises:
      ValueError: ``dtype`` does not match ``input_shape``'s structure.
    """
    structure, keys = ("single", [None]) if _is_shape(input_shape) else structure_of(
        input_shape, "input_shape")
    if structure == "dict":
        keys = sorted(keys)  # the order jax.export flattens a dict in
    shapes = unpack(structure, keys, input_shape)
    if isinstance(dtype, dict | list | tuple):
        given, _ = structure_of(dtype, "dtype")
        if given != structure or (given == "dict" and set(dtype) != set(keys)) or (
                given == "tuple" and len(dtype) != len(keys)):
            raise ValueError(f"dtype must be one dtype, or a {structure} matching input_shape "
                             f"{input_shape}; got {dtype}")
        dtypes = unpack(structure, keys, dtype)
    else:
        dtypes = [dtype] * len(keys)
    return ExportInputs(structure, default_names(structure, keys, "input"), keys,
                        [tuple(int(d) for d in shape) for shape in shapes],
                        [np.dtype(d) for d in dtypes])
