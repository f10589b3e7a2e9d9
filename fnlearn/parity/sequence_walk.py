"""Reading sequence models as chains: recurrent modules, Transformer encoders, Keras blocks.

``graphs`` walks a model as a chain of ops; this module tells it what the sequence
layers amount to there (it returns plain tuples ``(kind, obj, where, config)``, which
``graphs`` makes ``Op``\\ s of):

* a PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` returns ``(output, states)``: taking
  ``[0]`` keeps the chain, an unused ``[1]`` is dropped, and ``output[:, -1]`` (or
  ``output[-1]`` without ``batch_first``) folds into the op as "last step only".
  ``num_layers=k`` is k ops, each a ``RecurrentLayer`` (the module and a layer index),
  with PyTorch's ``dropout`` between them;
* an ``nn.TransformerEncoder`` is one op per layer, then its ``norm``;
* a Keras functional model (nested ones too) is followed tensor by tensor from its
  input: a ``MultiHeadAttention`` called on one tensor is self-attention, and two
  residual units ``x + f(x)`` with their LayerNorms make a Transformer encoder block
  (``KerasEncoderBlock``, post-norm or pre-norm, as PyTorch's ``TransformerEncoderLayer``).
"""

from __future__ import annotations

import operator
from typing import NamedTuple

RECURRENT_MODULES = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple_rnn",
                     "SequenceLSTM": "lstm", "SequenceGRU": "gru", "SequenceRNN": "simple_rnn"}
TUPLE_MODULES = ("LSTM", "GRU", "RNN", "MultiheadAttention")


class RecurrentLayer(NamedTuple):
    """Layer ``index`` of a multi-layer PyTorch recurrent ``module`` (its ``_l{index}``
    weights)."""

    module: object
    index: int

    def named_parameters(self, recurse: bool = False):
        for name, value in self.module.named_parameters(recurse=False):
            stem, _, rest = name.partition(f"_l{self.index}")
            if rest in ("", "_reverse") and stem != name:
                yield f"{stem}_l0{rest}", value

    def named_buffers(self, recurse: bool = False):
        return iter(())


def torch_module_ops(module, where: str) -> list[tuple] | None:
    """The ops of a recurrent module or a TransformerEncoder, or None for another module."""
    name = type(module).__name__
    if name in ("LSTM", "GRU", "RNN"):
        if getattr(module, "proj_size", 0):
            raise ValueError(f"LSTM at {where} has proj_size={module.proj_size}: not supported")
        kind = RECURRENT_MODULES[name]
        config = {"return_sequences": True, "tuple": True}
        if module.num_layers == 1:
            return [(kind, module, where, config)]
        ops = []
        for index in range(module.num_layers):
            if index and module.dropout:
                ops.append(("dropout", None, f"{where} dropout {index}", {"p": module.dropout}))
            ops.append((kind, RecurrentLayer(module, index), f"{where} layer {index}", config))
        return ops
    if name == "TransformerEncoder":
        ops = [("transformer_encoder", layer, f"{where} layer {i}", {})
               for i, layer in enumerate(module.layers)]
        if module.norm is not None:
            ops.append(("layer_norm", module.norm, f"{where} norm", {}))
        return ops
    return None


def recurrent_module(obj):
    """The PyTorch module behind an op's object (a module, or a ``RecurrentLayer``)."""
    return obj.module if isinstance(obj, RecurrentLayer) else obj


def _is_slice_all(value) -> bool:
    return isinstance(value, slice) and value == slice(None)


def torch_item(node, last: tuple | None, tuple_source) -> tuple[str, object]:
    """What a ``getitem`` node does in a chain: ``("skip", None)`` (an unused state),
    ``("select", None)`` (the output of a tuple), ``("fold", None)`` (the last step of the
    recurrent op before it), ``("take", index)`` (``x[:, index]``), or ``("other", None)``.

    Args:
      node: the fx node.
      last: the op before it, as ``(kind, obj, where, config)``, or None.
      tuple_source: the fx node of the op whose output is a tuple, or None.
    """
    source, index = node.args[0], node.args[1]
    if tuple_source is not None and source is tuple_source:
        if index == 0:
            return "select", None
        if not node.users:
            return "skip", None
        raise ValueError(f"item {index} of {tuple_source.name!r} (the final states or "
                         "attention weights) is used: only the output can be imported")
    batch_first = True
    if last is not None and last[0] in ("lstm", "gru", "simple_rnn"):
        batch_first = bool(getattr(recurrent_module(last[1]), "batch_first", True))
    if batch_first and isinstance(index, tuple) and len(index) in (2, 3) and \
            _is_slice_all(index[0]) and isinstance(index[1], int) and \
            all(map(_is_slice_all, index[2:])):
        step = index[1]
    elif not batch_first and isinstance(index, int):
        step = index
    else:
        return "other", None
    # The last step of a one-direction output is its final state; a bidirectional one's
    # backward half there is the backward pass's first step.
    if last is not None and step == -1 and last[0] in ("lstm", "gru", "simple_rnn") and \
            last[3].get("return_sequences") and not recurrent_module(last[1]).bidirectional:
        return "fold", None
    return "take", step


def torch_method(node) -> tuple[str, dict] | None:
    """A ``reshape``/``view`` to more than two axes, or a ``mean`` over axis 1, as an op."""
    if node.target in ("reshape", "view"):
        target = node.args[1:]
        if len(target) == 1 and isinstance(target[0], tuple | list):
            target = tuple(target[0])
        if len(target) > 2 and all(isinstance(d, int) for d in target[1:]):
            return "reshape", {"target_shape": tuple(target[1:])}
        return None
    if node.target == "mean":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim == 1 and not node.kwargs.get("keepdim", False):
            return "global_avg_pool1d", {}
    return None


def is_mean_function(torch, node) -> bool:
    """``torch.mean(x, dim=1)`` (or ``1`` positionally)."""
    if node.target is not torch.mean:
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dim == 1 and not node.kwargs.get("keepdim", False)


GETITEM = operator.getitem


# --- Keras ----------------------------------------------------------------------------------


class KerasEncoderBlock(NamedTuple):
    """A Transformer encoder block found in a Keras functional graph: its layers, by role."""

    attention: object
    norm1: object
    linear1: object
    linear2: object
    norm2: object
    dropouts: tuple
    norm_first: bool
    causal: bool
    name: str

    def layers(self) -> tuple:
        return self.attention, self.norm1, self.linear1, self.linear2, self.norm2

    def get_weights(self) -> list:
        return [w for layer in self.layers() for w in layer.get_weights()]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        for layer in self.layers():
            count = len(layer.get_weights())
            layer.set_weights(weights[:count])
            weights = weights[count:]

    def get_config(self) -> dict:
        return {"name": self.name}


def _calls(model) -> dict:
    """For each tensor (by id), the ``(layer, node)`` calls that read it."""
    readers = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in {id(t): t for t in node.arguments.keras_tensors}.values():
                readers.setdefault(id(tensor), []).append((layer, node))
    return readers


def _causal(node) -> bool:
    """Whether a Keras call was made with ``use_causal_mask=True``; refuses mask tensors."""
    kwargs = getattr(node.arguments, "kwargs", {}) if node is not None else {}
    if kwargs.get("attention_mask") is not None:
        raise ValueError("a MultiHeadAttention called with an attention_mask tensor cannot be "
                         "converted: its mask is an input of the graph")
    return bool(kwargs.get("use_causal_mask", False))


def keras_chain(model) -> list[tuple]:
    """``(layer or block, where, config)`` in chain order for a Keras model (nested models
    walked); ``config["causal"]`` for a self-attention call.

    Raises:
      ValueError: a branch that is not a residual unit of a Transformer encoder block, or
        a layer with several different inputs.
    """
    name = type(model).__name__
    if name == "Sequential":
        out = []
        for position, layer in enumerate(model.layers):
            if type(layer).__name__ in ("Functional", "Sequential"):
                out += keras_chain(layer)
            elif type(layer).__name__ != "InputLayer":
                out.append((layer, f"layer {position} {layer.name!r}", {}))
        return out
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs: only one of each can be converted")
    readers, items = _calls(model), []
    tensor, end = model.inputs[0], id(model.outputs[0])
    while id(tensor) != end:
        calls = readers.get(id(tensor), [])
        if len(calls) == 1:
            layer, node = calls[0]
            sources = {id(t) for t in node.arguments.keras_tensors}
            where = f"layer {layer.name!r}"
            if len(sources) != 1:
                raise ValueError(f"the graph branches at {where} ({type(layer).__name__} takes "
                                 f"{len(sources)} different inputs): only chains and "
                                 "Transformer encoder blocks can be converted")
            if type(layer).__name__ in ("Functional", "Sequential"):
                items += keras_chain(layer)
            else:
                items.append((layer, where, {"causal": _causal(node)}
                              if type(layer).__name__ == "MultiHeadAttention" else {}))
            tensor = node.outputs[0]
            continue
        if not calls:
            raise ValueError(f"the graph of {model.name!r} ends before its output")
        inner, tensor = _residual(model, tensor, calls, readers)
        items.append(("residual", inner))
    return _blocks(items)


def _residual(model, start, calls, readers):
    """The chain of a residual unit ``start + f(start)``: ``([(layer, where, node)], sum)``."""
    adds = [(layer, node) for layer, node in calls if type(layer).__name__ == "Add"]
    others = [(layer, node) for layer, node in calls if type(layer).__name__ != "Add"]
    if len(adds) != 1 or len(others) != 1:
        names = ", ".join(repr(layer.name) for layer, _ in calls)
        raise ValueError(f"the graph branches into {names}: only chains and the residual units "
                         "of Transformer encoder blocks (x + f(x)) can be converted")
    add_layer, add_node = adds[0]
    inner, (layer, node) = [], others[0]
    while True:
        inner.append((layer, f"layer {layer.name!r}", node))
        out = node.outputs[0]
        following = readers.get(id(out), [])
        if len(following) != 1:
            raise ValueError(f"the residual branch from layer {layer.name!r} branches again")
        layer, node = following[0]
        if layer is add_layer:
            return inner, add_node.outputs[0]
        if len({id(t) for t in node.arguments.keras_tensors}) != 1:
            raise ValueError(f"layer {layer.name!r} inside a residual branch takes several "
                             "inputs: not supported")


def _kind(layer) -> str:
    return type(layer).__name__


def _without_dropout(chain):
    kept = [item for item in chain if _kind(item[0]) != "Dropout"]
    return kept, tuple(item[0] for item in chain if _kind(item[0]) == "Dropout")


def _block(first, between, second, after):
    """A ``KerasEncoderBlock`` from two residual units (and the LayerNorms after them), or None."""
    a, drop_a = _without_dropout(first)
    f, drop_f = _without_dropout(second)
    norm_first = between is None
    if norm_first:
        if [_kind(x[0]) for x in a] != ["LayerNormalization", "MultiHeadAttention"] or \
                [_kind(x[0]) for x in f] != ["LayerNormalization", "Dense", "Dense"]:
            return None
        attention, norm1, (linear1, linear2), norm2 = a[1], a[0], f[1:], f[0]
    else:
        if [_kind(x[0]) for x in a] != ["MultiHeadAttention"] or \
                [_kind(x[0]) for x in f] != ["Dense", "Dense"]:
            return None
        attention, norm1, (linear1, linear2), norm2 = a[0], between, f, after
    return KerasEncoderBlock(attention[0], norm1[0], linear1[0], linear2[0], norm2[0],
                             drop_a + drop_f, norm_first, _causal(attention[2]),
                             attention[0].name)


def _blocks(items: list) -> list[tuple]:
    """Items with each pair of residual units (and their LayerNorms) made one encoder block."""
    out, i = [], 0
    while i < len(items):
        item = items[i]
        if item[0] != "residual":
            out.append(item)
            i += 1
            continue
        block = None
        if i + 1 < len(items) and items[i + 1][0] == "residual":
            block, used = _block(item[1], None, items[i + 1][1], None), 2
        elif i + 3 < len(items) and items[i + 2][0] == "residual" and \
                _kind(items[i + 1][0]) == _kind(items[i + 3][0]) == "LayerNormalization":
            block, used = _block(item[1], items[i + 1], items[i + 2][1], items[i + 3]), 4
        if block is None:
            kinds = " -> ".join(_kind(x[0]) for x in item[1])
            raise ValueError(f"a residual unit x + f(x) with f = {kinds} is not part of a "
                             "Transformer encoder block (self-attention then a two-Dense "
                             "feed-forward, each with its LayerNorm): not supported")
        out.append((block, f"block {block.name!r}", {}))
        i += used
    return out
