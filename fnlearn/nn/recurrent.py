"""Recurrent layers: ``SimpleRNN``, ``LSTM``, ``GRU`` and the ``Bidirectional`` wrapper.

Inputs are ``(batch, time, features)`` (``time_major=True``: ``(time, batch, features)``,
PyTorch's default ``batch_first=False``). A layer takes either that array or a dict of

* ``"inputs"``: the array;
* ``"mask"``: ``(batch, time)``, true for the real steps (Keras's mask), or ``"lengths"``:
  ``(batch,)`` ints, the real steps at the start of each sequence (PyTorch's
  ``pack_padded_sequence``). A masked step keeps the state: a sequence's final state is
  the one at its last real step, as PyTorch's packed sequences give;
* ``"initial_state"``: the states at the first step, ``(batch, units)`` each (LSTM:
  ``(h, c)``; Bidirectional: the forward layer's, then the backward layer's).

Outputs: the last step's output ``(batch, units)``, or every step's with
``return_sequences``; with ``return_state`` a tuple ``(outputs, *final_states)``, as
Keras's ``[output, h, c]``. Stack layers with ``serial`` (each but the last with
``return_sequences=True``): PyTorch's ``num_layers``.

``convention="torch"`` gives PyTorch's initialization and its two biases (``bias_ih``,
``bias_hh``), so weights convert both ways exactly; ``"keras"`` Keras's initializers
and one bias. Parameter layout and gate orders: ``fnlearn.nn.rnn_cells``.

``dtype`` and ``param_dtype`` as ``Dense``'s (``fnlearn.nn.precision``): with
``dtype="bfloat16"`` (what ``nn.with_policy(model, "mixed_bfloat16")`` sets) the input
projection and the recurrent product take bfloat16 operands and sum in float32, while
the states ``h`` and ``c``, the gates and the biases stay float32 from step to step;
the outputs and final states are rounded to bfloat16 once, after the loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnlearn.nn import precision, rnn_cells
from fnlearn.nn.activations import ACTIVATIONS
from fnlearn.nn.core import Layer, arguments_of, constructor

_NAMES = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
_KEYS = ("inputs", "mask", "lengths", "initial_state")


def _sequence_shape(input_shape, layer: str):
    """The per-example ``(time, features)`` shape among a layer's (possibly dict) input shapes."""
    shape = input_shape.get("inputs") if isinstance(input_shape, dict) else input_shape
    if isinstance(input_shape, dict) and (shape is None or set(input_shape) - set(_KEYS)):
        raise ValueError(f"{layer} takes a dict with keys {_KEYS} ('inputs' required), got keys "
                         f"{sorted(input_shape)}")
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
        raise TypeError(f"{layer} got several inputs {shape}: pass one (batch, time, features) "
                        "array, or a dict {'inputs': x, 'mask': m, 'initial_state': s}")
    if len(shape) != 2:
        hint = (" a batch of vectors has no time axis: give each example a time axis "
                "(x[:, None, :] for one step, or reshape to (batch, time, features))"
                if len(shape) == 1 else " reshape to (batch, time, features)")
        raise ValueError(f"{layer} needs per-example inputs (time, features), got shape "
                         f"{tuple(shape)}:{hint}")
    return shape


def _unpack(x, layer: str, n_states: int, time_major: bool):
    """``(sequences (batch, time, features), mask (batch, time) or None, initial or None)``."""
    if isinstance(x, list | tuple):
        lengths = sorted({len(s) for s in x if hasattr(s, "__len__")})
        what = (f"sequences of lengths {lengths}: pad them into one (batch, time, features) "
                "array and pass the lengths: padded, lengths = fnlearn.data.pad_sequences(seqs)"
                "; then {'inputs': padded, 'lengths': lengths}" if len(lengths) > 1 else
                "arrays: stack them into one (batch, time, features) array (np.stack), or "
                "pass a dict {'inputs': x, 'mask': m, 'initial_state': s}")
        raise TypeError(f"{layer} inputs must be one array or a dict, got a "
                        f"{type(x).__name__} of {len(x)} {what}")
    extras = {}
    if isinstance(x, dict):
        unknown = set(x) - set(_KEYS)
        if "inputs" not in x or unknown:
            raise ValueError(f"{layer} takes a dict with keys {_KEYS} ('inputs' required), "
                             f"got keys {sorted(x)}")
        extras, x = x, x["inputs"]
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{layer} inputs must be (batch, time, features), got shape "
                         f"{tuple(x.shape)}" + (": no time axis (x[:, None, :] gives one step "
                                                "per example)" if x.ndim == 2 else ""))
    if time_major:
        x = jnp.swapaxes(x, 0, 1)
    batch, time = x.shape[:2]
    swapped = (f"; time and batch look swapped: inputs {tuple(x.shape)} are read as "
               f"(batch, time, features){' after time_major' if time_major else ''}, pass "
               "(batch, time, features) or set time_major" if time != batch else "")
    mask = None
    if extras.get("mask") is not None:
        mask = jnp.asarray(extras["mask"])
        if mask.shape != (batch, time):
            raise ValueError(f"{layer} mask must be (batch, time) = {(batch, time)}, got shape "
                             f"{tuple(mask.shape)}" + (swapped if mask.shape == (time, batch)
                                                        else ""))
        mask = mask if mask.dtype == jnp.bool_ else mask != 0
    if extras.get("lengths") is not None:
        if mask is not None:
            raise ValueError(f"{layer} takes a mask or lengths, not both")
        lengths = jnp.asarray(extras["lengths"])
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(f"{layer} lengths must be (batch,) = ({batch},) integers, got "
                             f"{lengths.dtype} of shape {tuple(lengths.shape)}"
                             + (swapped if lengths.shape == (time,) else ""))
        mask = jnp.arange(time)[None, :] < lengths[:, None]
    initial = extras.get("initial_state")
    if initial is not None:
        initial = tuple(initial) if isinstance(initial, list | tuple) else (initial,)
        initial = tuple(jnp.asarray(s) for s in initial)
        if len(initial) != n_states:
            raise ValueError(f"{layer} initial_state needs {n_states} arrays, got "
                             f"{len(initial)}")
        for s in initial:
            if s.ndim == 3:
                raise ValueError(f"{layer} initial_state arrays are (batch, units), got shape "
                                 f"{tuple(s.shape)}: PyTorch's (num_layers * directions, "
                                 "batch, units) holds one per layer and direction; pass h0[i]")
            if s.ndim != 2 or s.shape[0] != batch:
                raise ValueError(f"{layer} initial_state arrays must be (batch, units) with "
                                 f"batch {batch}, got shape {tuple(s.shape)}"
                                 + (swapped if s.ndim == 2 and s.shape[0] == time else ""))
    return x, mask, initial


def _recurrent(kind: str, config: dict, dtype, param_dtype) -> Layer:
    """The layer of ``kind`` for ``config`` (every option; ``Bidirectional`` rebuilds from it)
    computing in ``dtype`` (None: what its inputs and parameters promote to), its
    parameters stored in ``param_dtype``."""
    c = config
    units, name = c["units"], _NAMES[kind]
    n_states = rnn_cells.STATES[kind]
    compute = precision.check_dtype(dtype, f"{name} dtype")
    stored = precision.check_dtype(param_dtype, f"{name} param_dtype")

    def init_fn(key, input_shape):
        time, features = _sequence_shape(input_shape, name)
        params = rnn_cells.init_params(key, kind, features, units, convention=c["convention"],
                                       use_bias=c["use_bias"], reset_after=c["reset_after"])
        params = jax.tree.map(lambda p: p.astype(stored), params)
        if c["return_sequences"]:
            out = (time, units)
        else:
            out = (units,)
        if c["return_state"]:
            out = (out, *[(units,)] * n_states)
        return out, params

    def apply_fn(params, x, *, key=None, train=False):
        x, mask, initial = _unpack(x, name, n_states, c["time_major"])
        if x.shape[-1] != params["kernel"].shape[0]:
            raise ValueError(f"{name} was built for {params['kernel'].shape[0]} features, got "
                             f"inputs of shape {tuple(x.shape)} (batch, time, features): give "
                             "the features the layer was initialized for, or initialize it "
                             "for these")
        if c["mask_value"] is not None:
            real = jnp.any(x != c["mask_value"], axis=-1)
            mask = real if mask is None else mask & real
        dtype = precision.compute_dtype(compute, x, params["kernel"])
        half = precision.is_half(dtype)
        if not half:
            x = x.astype(dtype)
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        # A 16-bit layer keeps its states in float32: rounded at every step, their error
        # would grow with the sequence's length.
        state_dtype = jnp.float32 if half else dtype
        batch = x.shape[0]
        if initial is None:
            initial = tuple(jnp.zeros((batch, units), state_dtype) for _ in range(n_states))
        else:
            initial = tuple(s.astype(state_dtype) for s in initial)
        projected = rnn_cells.project_inputs(params, x, kind, c["reset_after"], dtype)
        time_mask = None if mask is None else mask.T
        if c["go_backwards"]:
            projected = projected[::-1]
            time_mask = None if time_mask is None else time_mask[::-1]
        step = rnn_cells.step_fn(kind, params, c["activation"], c["recurrent_activation"],
                                 c["reset_after"], dtype)
        outputs, final = rnn_cells.run(step, projected, initial, time_mask,
                                       sequences=c["return_sequences"],
                                       zero_output_for_mask=c["zero_output_for_mask"],
                                       unroll=c["unroll"])
        if c["return_sequences"] and not c["time_major"]:
            outputs = jnp.swapaxes(outputs, 0, 1)
        if half:
            outputs, final = outputs.astype(dtype), tuple(s.astype(dtype) for s in final)
        return (outputs, *final) if c["return_state"] else outputs

    extra = {"output_structure": ("tuple", 1 + n_states)} if c["return_state"] else {}
    return Layer(init_fn, apply_fn, kind, {**config, **extra})


def _options(kind, units, activation, recurrent_activation, use_bias, return_sequences,
             return_state, go_backwards, time_major, convention, reset_after, mask_value,
             zero_output_for_mask, unroll) -> dict:
    name = _NAMES[kind]
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
        raise ValueError(f"{name} units must be a positive int, got {units!r}")
    for argument, value in (("activation", activation),
                            ("recurrent_activation", recurrent_activation)):
        if value not in ACTIVATIONS:
            raise ValueError(f"{name} {argument} must be one of {sorted(ACTIVATIONS)}, got "
                             f"{value!r}")
    if convention not in ("keras", "torch"):
        raise ValueError(f"{name} convention must be 'keras' or 'torch', got {convention!r}")
    if kind == "gru" and convention == "torch" and not reset_after:
        raise ValueError("GRU(reset_after=False) has no PyTorch counterpart: PyTorch's GRU "
                         "applies the reset gate after the recurrent product (reset_after="
                         "True); use convention='keras' for the classic formula")
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"{name} unroll must be a positive int (time steps per loop "
                         f"iteration), got {unroll!r}")
    return {"units": units, "activation": activation,
            "recurrent_activation": recurrent_activation, "use_bias": use_bias,
            "return_sequences": return_sequences, "return_state": return_state,
            "go_backwards": go_backwards, "time_major": time_major, "convention": convention,
            "reset_after": reset_after, "mask_value": mask_value,
            "zero_output_for_mask": zero_output_for_mask, "unroll": unroll}


@constructor
def SimpleRNN(units: int, activation: str = "tanh", *, use_bias: bool = True,
              return_sequences: bool = False, return_state: bool = False,
              go_backwards: bool = False, time_major: bool = False, convention: str = "keras",
              mask_value: float | None = None, zero_output_for_mask: bool = False,
              unroll: int = 1, dtype=None, param_dtype="float32") -> Layer:
    """``h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)`` (Keras
    ``SimpleRNN``, PyTorch ``nn.RNN`` with ``nonlinearity`` tanh or relu).

    Args:
      units: the state size (PyTorch's ``hidden_size``).
      activation: the nonlinearity, a name from ``ACTIVATIONS``.
      use_bias: learn biases (PyTorch's ``bias``).
      return_sequences: output every step ``(batch, time, units)``, not only the last.
      return_state: also return the final state: ``(outputs, h)``.
      go_backwards: read the sequence from its end (outputs in that order, as Keras).
      time_major: inputs (and output sequences) are ``(time, batch, ...)``.
      convention: ``"keras"`` or ``"torch"``: initialization and one or two biases.
      mask_value: steps whose features all equal it are masked (Keras's ``Masking``).
      zero_output_for_mask: masked steps of the output sequence are zeros (PyTorch's
        padded output of a packed sequence; Keras repeats the previous output).
      unroll: time steps per loop iteration.
      dtype: the dtype it computes in (``fnlearn.nn.precision``): None follows the
        inputs and parameters; ``"bfloat16"`` multiplies in bfloat16 with float32 sums,
        keeps the state float32, and returns bfloat16.
      param_dtype: the parameters' dtype.
    """
    return _recurrent("simple_rnn", _options(
        "simple_rnn", units, activation, "sigmoid", use_bias, return_sequences, return_state,
        go_backwards, time_major, convention, False, mask_value, zero_output_for_mask, unroll),
        dtype, param_dtype)


@constructor
def LSTM(units: int, *, activation: str = "tanh", recurrent_activation: str = "sigmoid",
         use_bias: bool = True, return_sequences: bool = False, return_state: bool = False,
         go_backwards: bool = False, time_major: bool = False, convention: str = "keras",
         mask_value: float | None = None, zero_output_for_mask: bool = False,
         unroll: int = 1, dtype=None, param_dtype="float32") -> Layer:
    """Long short-term memory (Keras ``LSTM``, PyTorch ``nn.LSTM`` with one layer).

    Gates ``i, f, c, o`` (PyTorch's ``i, f, g, o``): ``c_t = f * c_{t-1} + i * g``,
    ``h_t = o * tanh(c_t)``; with ``return_state`` the outputs are ``(outputs, h, c)``.
    Arguments as ``SimpleRNN``; ``recurrent_activation`` is the gates' (sigmoid). The
    cell state ``c`` is float32 with a 16-bit ``dtype``, as ``h`` is.
    ``convention="keras"`` starts the forget-gate bias at 1 (Keras's ``unit_forget_bias``).
    """
    return _recurrent("lstm", _options(
        "lstm", units, activation, recurrent_activation, use_bias, return_sequences,
        return_state, go_backwards, time_major, convention, False, mask_value,
        zero_output_for_mask, unroll), dtype, param_dtype)


@constructor
def GRU(units: int, *, activation: str = "tanh", recurrent_activation: str = "sigmoid",
        use_bias: bool = True, reset_after: bool = True, return_sequences: bool = False,
        return_state: bool = False, go_backwards: bool = False, time_major: bool = False,
        convention: str = "keras", mask_value: float | None = None,
        zero_output_for_mask: bool = False, unroll: int = 1, dtype=None,
        param_dtype="float32") -> Layer:
    """Gated recurrent unit (Keras ``GRU``, PyTorch ``nn.GRU`` with one layer).

    ``h_t = z * h_{t-1} + (1 - z) * tanh(x W_h + r * (h_{t-1} U_h + b_rh))`` with
    ``reset_after=True`` (Keras 3's default and PyTorch's only formula); ``False`` is
    the classic ``tanh(x W_h + (r * h_{t-1}) U_h)``, which PyTorch cannot express.
    Arguments as ``SimpleRNN``.
    """
    return _recurrent("gru", _options(
        "gru", units, activation, recurrent_activation, use_bias, return_sequences,
        return_state, go_backwards, time_major, convention, reset_after, mask_value,
        zero_output_for_mask, unroll), dtype, param_dtype)


_MERGES = {"concat": lambda a, b: jnp.concatenate([a, b], axis=-1), "sum": jnp.add,
           "mul": jnp.multiply, "ave": lambda a, b: (a + b) / 2}


@constructor
def Bidirectional(layer: Layer, merge_mode: str | None = "concat") -> Layer:
    """Runs a recurrent layer forwards and a copy backwards, and merges the two (Keras
    ``Bidirectional``; PyTorch's ``bidirectional=True`` is ``merge_mode="concat"``).

    The backward copy has its own weights and reads the sequence from its end; its
    output sequence is put back in time order before merging. With a mask (or lengths)
    the backward copy starts at each sequence's last real step, as PyTorch's packed
    sequences do, and masked steps of an output sequence are zeros (as Keras forces).
    Parameters are ``{"forward": ..., "backward": ...}``. Both copies compute in the
    wrapped layer's ``dtype`` and store ``param_dtype`` (``with_policy`` sets the wrapped
    layer's), and the merge is of their outputs in that dtype.

    Args:
      layer: a ``SimpleRNN``, ``LSTM`` or ``GRU``.
      merge_mode: ``"concat"``, ``"sum"``, ``"mul"``, ``"ave"``, or None for the pair
        ``(forward, backward)``.
    """
    if not isinstance(layer, Layer) or layer.kind not in _NAMES:
        raise TypeError(f"Bidirectional wraps a SimpleRNN, LSTM or GRU, got {layer!r}")
    if merge_mode is not None and merge_mode not in _MERGES:
        raise ValueError(f"Bidirectional merge_mode must be one of {sorted(_MERGES)} or None, "
                         f"got {merge_mode!r}")
    config = {k: v for k, v in layer.config.items() if k != "output_structure"}
    # Keras's Bidirectional: masked steps of an output sequence are zeros in both directions.
    config["zero_output_for_mask"] = config["return_sequences"]
    given = arguments_of(layer)
    dtypes = given.get("dtype"), given.get("param_dtype", "float32")
    forward = _recurrent(layer.kind, config, *dtypes)
    backward = _recurrent(layer.kind, {**config, "go_backwards": not config["go_backwards"]},
                          *dtypes)
    n_states = rnn_cells.STATES[layer.kind]
    sequences, with_state = config["return_sequences"], config["return_state"]
    time_axis = 0 if config["time_major"] else 1

    def init_fn(key, input_shape):
        forward_key, backward_key = jax.random.split(key)
        out, forward_params = forward.init(forward_key, input_shape)
        _, backward_params = backward.init(backward_key, input_shape)
        single = out[0] if with_state else out
        merged = (single[:-1] + (2 * single[-1],) if merge_mode == "concat" else
                  (single, single) if merge_mode is None else single)
        if with_state:
            merged = (merged, *out[1:], *out[1:])
        return merged, {"forward": forward_params, "backward": backward_params}

    def apply_fn(params, x, *, key=None, train=False):
        forward_x, backward_x = x, x
        if isinstance(x, dict) and x.get("initial_state") is not None:
            states = tuple(x["initial_state"])
            if len(states) != 2 * n_states:
                raise ValueError(f"Bidirectional initial_state needs {2 * n_states} arrays "
                                 f"(the forward layer's, then the backward's), got {len(states)}")
            forward_x = {**x, "initial_state": states[:n_states]}
            backward_x = {**x, "initial_state": states[n_states:]}
        forward_out = forward.apply(params["forward"], forward_x)
        backward_out = backward.apply(params["backward"], backward_x)
        f = forward_out[0] if with_state else forward_out
        b = backward_out[0] if with_state else backward_out
        if sequences:
            b = jnp.flip(b, axis=time_axis)
        merged = (f, b) if merge_mode is None else _MERGES[merge_mode](f, b)
        if with_state:
            return (merged, *forward_out[1:], *backward_out[1:])
        return merged

    extra = ({"output_structure": ("tuple", 1 + 2 * n_states)} if with_state else
             {"output_structure": ("tuple", 2)} if merge_mode is None else {})
    return Layer(init_fn, apply_fn, "bidirectional",
                 {"merge_mode": merge_mode, "layer": layer.kind, **config, **extra},
                 children=(forward, backward))
