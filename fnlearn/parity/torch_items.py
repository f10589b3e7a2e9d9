"""How ``torch_import``'s reader reads what sequence models do with tensors and tuples.

* A module whose output is a tuple (``nn.LSTM``'s ``(output, states)``,
  ``nn.MultiheadAttention``'s ``(output, weights)``) is imported as its output: item 0
  is that output, an unused item 1 is dropped and a used one refused.
* ``output[:, -1]`` right after a one-direction recurrent module (``output[-1]``
  without ``batch_first``) becomes that layer's ``return_sequences=False``; any other
  ``x[:, i]`` of a sequence is a ``TakeStep(i)``.
* ``x.mean(dim=1)`` of a sequence is a ``GlobalAveragePooling1D``.
* A module the builders import as several layers (``builders.Part``) is called as
  their chain, each named ``<module>.<suffix>``.
"""

from __future__ import annotations

import operator

from fnlearn import nn
from fnlearn.parity.importer import Call, named

RECURRENT_KINDS = ("lstm", "gru", "simple_rnn")


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _is_all(value) -> bool:
    return isinstance(value, slice) and value == slice(None)


def step_index(index, batch_first: bool = True) -> int | None:
    """``i`` of ``x[:, i]`` (``x[i]`` for a time-major value), else None."""
    if not batch_first:
        return index if isinstance(index, int) else None
    if isinstance(index, tuple) and len(index) in (2, 3) and _is_all(index[0]) and \
            isinstance(index[1], int) and all(map(_is_all, index[2:])):
        return index[1]
    return None


def _items(node) -> list:
    return [u for u in node.users if u.op == "call_function" and u.target is operator.getitem]


def plan_last_steps(reader) -> dict:
    """``{recurrent module node: {"return_sequences": False}}`` for each one-direction
    recurrent module whose output is only read at its last step; those reads are marked
    in ``reader.passthrough``."""
    folded = {}
    for node in reader.graph.nodes:
        if node.op != "call_module" or reader.kind(node) not in RECURRENT_KINDS \
                or reader.calls_of[node.target] != 1:
            continue
        module = reader.submodules[node.target]
        if module.bidirectional or hasattr(module, "fnlearn_layer"):
            continue
        outputs = [u for u in _items(node) if u.args[1] == 0]
        if len(outputs) != 1 or len(outputs[0].users) != 1:
            continue
        (step,) = outputs[0].users
        if step.op == "call_function" and step.target is operator.getitem and \
                step_index(step.args[1], module.batch_first) == -1:
            folded[node] = {"return_sequences": False}
            reader.passthrough.add(step)
    return folded


def read_item(reader, node, where: str) -> None:
    """A ``getitem`` node: an item of a tuple output, or one step of a sequence."""
    source, index = node.args[0], node.args[1]
    value = reader.env[source]
    if isinstance(value, list | tuple | dict):
        reader.env[node] = value[index]
        return
    shape = _shape(source)
    if shape is None:  # a module's tuple output, held as its first item
        if index == 0:
            reader.env[node] = value
            return
        if node.users:
            raise ValueError(f"item {index} of {source.name!r} (the final states or attention "
                             "weights) is used: only the output can be imported")
        reader.env[node] = None
        return
    step = step_index(index) if len(shape) == 3 else None
    if step is None:
        raise ValueError(f"{where} indexes a tensor with {index!r}: slicing is not supported "
                         "(x[:, i], one step of a sequence, is)")
    reader.call(nn.TakeStep(step), value, node)


def time_mean(node, shape) -> nn.Layer | None:
    """``GlobalAveragePooling1D`` for the mean over the steps of a sequence, else None."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if len(shape) == 3 and dims in (1, -2, (1,), [1]) and not node.kwargs.get("keepdim"):
        return nn.GlobalAveragePooling1D()
    return None


def call_parts(reader, parts, x, node, module) -> None:
    """The chain of a module's parts on ``x``, built and converted once per module."""
    key = id(module)
    if key not in reader.layers:
        numbered = node.target.replace(".", "").isdigit()
        built = []
        for part in parts:
            layer = named(part.layer, None if numbered else f"{node.target}.{part.suffix}")
            if part.source is not None:
                reader.convert(layer, part.source, node)
            built.append(layer)
        reader.layers[key] = built
    for layer in reader.layers[key]:
        out = layer(x)
        reader.calls.append(Call(layer, x, out))
        x = out
    reader.env[node] = x
