"""What both importers share: the import's result, its parity report, and the model they build.

``from_torch`` (``torch_import``) and ``from_keras`` (``keras_import``) read a live model
as a graph of operations, build one fnlearn layer per operation (``builders``), move
the weights with the registered converters (``registry``), run both models on one
random batch and report the worst error. A report that fails raises
``ImportMismatchError`` (``strict=False``: a warning), so a wrong import is never used
by accident.

A source that is a chain (one input, each operation reading the one before) becomes an
``nn.serial``; anything else (residual adds, concatenations, shared layers, several
inputs or outputs) an ``nn.Model``. Layers are named after the source's modules or
layers (``layer1.0.conv1``, ``conv2_block1_1_conv``); a PyTorch ``nn.Sequential``'s
numbered children keep fnlearn's ``<kind>_<n>`` names.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import NamedTuple

import jax
import numpy as np

from fnlearn import nn
from fnlearn.nn.core import Layer, apply, init_with_state
from fnlearn.nn.node import Node
from fnlearn.parity.compare import compare


class Report(NamedTuple):
    """How closely the imported model computes its source's function, on one random batch."""

    source: str
    batch_shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    passed: bool
    rtol: float

    def __str__(self) -> str:
        return (f"{self.source} -> fnlearn, forward on a random batch of shape "
                f"{self.batch_shape}: max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g} ({'ok' if self.passed else 'MISMATCH'}: "
                f"tolerance {self.rtol:g} of the largest |output|)")


class Imported(NamedTuple):
    """What an import returns: the fnlearn model, its parameters and state, and the report."""

    model: Layer
    params: dict
    model_state: dict
    report: Report


class ImportMismatchError(ValueError):
    """The imported model does not compute what its source computes; ``.imported`` has it."""

    def __init__(self, message: str, imported: Imported):
        super().__init__(message)
        self.imported = imported


def checked(imported: Imported, strict: bool) -> Imported:
    """``imported``, after a failed report has raised (``strict``) or warned."""
    if imported.report.passed:
        return imported
    message = (f"the import does not compute what its source computes: {imported.report}; "
               "compare layer by layer (fnlearn.parity.compare) to find the step at fault, or "
               "pass strict=False to get the model anyway with a warning")
    if strict:
        raise ImportMismatchError(message, imported)
    warnings.warn(message, UserWarning, stacklevel=3)
    return imported




def report(source: str, batch_shape: tuple, references: list, model: Layer, params, state, x,
           rtol: float) -> Report:
    """The ``Report`` of ``model`` on ``x`` against the source's outputs ``references`` (in the
    order of the model's output leaves, already in fnlearn's layout)."""
    # One compiled program: a deep model run op by op compiles each operation on its own.
    out = jax.jit(lambda p, s, v: apply(model, p, v, state=s)[0])(params, state, x)
    ours = jax.tree.leaves(out)
    if len(ours) != len(references):
        raise ValueError(f"the import has {len(ours)} outputs but {source} has "
                         f"{len(references)}")
    worst_abs, worst_rel, passed = 0.0, 0.0, True
    for i, (mine, reference) in enumerate(zip(ours, references)):
        reference = np.asarray(reference)
        result = compare(f"output {i}", np.asarray(mine), reference, rtol=rtol,
                         atol=rtol * float(np.abs(reference).max() or 1.0))
        worst_abs = max(worst_abs, result.max_abs_error)
        worst_rel = max(worst_rel, result.max_rel_error)
        passed = passed and result.passed
    return Report(source, tuple(batch_shape), worst_abs, worst_rel, passed, rtol)


class Call(NamedTuple):
    """One layer call of an import, in run order: the layer, the node(s) it reads, its output."""

    layer: Layer
    args: object
    out: Node


def build_model(inputs, outputs, calls: list[Call]) -> Layer:
    """An ``nn.serial`` of the calls when they form a chain from one input to one output,
    else the ``nn.Model`` from ``inputs`` to ``outputs``."""
    previous, seen = inputs, set()
    chain = isinstance(inputs, Node) and isinstance(outputs, Node)
    for call in calls:
        if not chain:
            break
        chain = call.args is previous and id(call.layer) not in seen
        seen.add(id(call.layer))
        previous = call.out
    if chain and previous is outputs and calls:
        return nn.serial(*[call.layer for call in calls])
    if chain and not calls:
        raise ValueError("the model computes nothing fnlearn can import (its output is its input)")
    return nn.Model(inputs, outputs)


def named(layer: Layer, name: str | None) -> Layer:
    """``layer`` stored under ``name`` (None: fnlearn's ``<kind>_<n>``)."""
    return layer if name is None else replace(layer, name=name)


def place_weights(model: Layer, input_shape, weights: dict) -> tuple[dict, dict]:
    """``(params, state)`` keyed by the model's layer names from ``weights`` (layer id ->
    ``(params, state)``), each checked against the shapes the model initializes."""
    if model.kind == "serial":
        layers, names = model.children, model.config["names"]
    else:
        spec = model.config["graph"]
        layers, names = spec.layers, spec.names
    _, like_params, like_state = jax.eval_shape(
        lambda k: init_with_state(model, k, input_shape), jax.random.key(0))
    params, state = {}, {}
    for layer, name in zip(layers, names):
        p, s = weights.get(id(layer), ({}, {}))
        _check_tree(name, p, like_params.get(name, {}))
        _check_tree(f"{name} state", s, like_state.get(name, {}))
        if p:
            params[name] = p
        if s:
            state[name] = s
    return params, state


def _check_tree(what: str, got: dict, like: dict) -> None:
    if set(got) != set(like):
        raise ValueError(f"{what}: converted weights {sorted(got)} do not match the fnlearn "
                         f"layer's {sorted(like)}")
    for key, value in got.items():
        if isinstance(value, dict):  # a layer made of parts (Bidirectional, attention)
            _check_tree(f"{what}/{key}", value, like[key])
        elif tuple(value.shape) != tuple(like[key].shape):
            raise ValueError(f"{what}/{key}: converted shape {tuple(value.shape)} does not "
                             f"match the fnlearn layer's {tuple(like[key].shape)}")
