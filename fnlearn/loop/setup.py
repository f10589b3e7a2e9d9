"""What both drivers do before training: validation split, the step, the mesh, the start state.

Everything here runs on the host before anything is compiled, so a mistake is named
(with the argument and the shapes) before a long compilation.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from fnlearn import checks
from fnlearn import sharding as sharding_lib
from fnlearn.loop.hooks import Hooks
from fnlearn.objectives import Custom, Supervised, supervised
from fnlearn.state import History, TrainState
from fnlearn.step import init_state


def split_validation(x, y, validation_data, validation_split: float):
    """``(x, y, validation_data)`` with the last ``validation_split`` of the data held out."""
    if validation_split and validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
        # Keras takes the last fraction of the data, before any shuffling.
        cut = int(checks.count_examples("x", x) * (1.0 - validation_split))
        head = partial(jax.tree.map, lambda a: a[:cut])
        tail = partial(jax.tree.map, lambda a: a[cut:])
        return head(x), None if y is None else head(y), (tail(x), None if y is None else tail(y))
    if validation_data is not None and (not isinstance(validation_data, tuple | list)
                                        or len(validation_data) != 2):
        raise ValueError("validation_data must be a pair (x_val, y_val)")
    return x, y, validation_data


class Placement:
    """Where a run's arrays live: the data split over the mesh's first (data) axis, the
    parameters by ``param_sharding``'s rule, everything else replicated; or one device."""

    def __init__(self, mesh, param_sharding=None):
        if mesh is None:
            if param_sharding is not None:
                raise ValueError("param_sharding needs mesh= (a jax.sharding.Mesh whose axes "
                                 "its rules name)")
            self.mesh = self.batch = None
            self.rule, self.devices = None, 1
            return
        # The step constrains the batch and the state and leaves the rest to XLA's
        # sharding propagation, which needs Auto axes (jax.make_mesh makes Explicit ones).
        self.mesh = Mesh(mesh.devices, mesh.axis_names,
                         axis_types=(AxisType.Auto,) * mesh.devices.ndim)
        self.axis = self.mesh.axis_names[0]
        self.devices = self.mesh.shape[self.axis]
        self.batch = NamedSharding(self.mesh, PartitionSpec(self.axis))
        self.rule = param_sharding
        # One process holds all the data; a multi-host run's global arrays stay whole.
        self.split = jax.process_count() == 1 and self.devices > 1

    def replicate(self, array):
        if self.mesh is None:
            return jax.device_put(array)
        return jax.device_put(array, NamedSharding(self.mesh, PartitionSpec()))

    def data(self, tree):
        """Training or validation data: rows split over the data axis (one process)."""
        if self.mesh is None or not self.split:
            return jax.tree.map(self.replicate, tree)
        return jax.tree.map(lambda a: sharding_lib.split_rows(a, self.mesh, self.axis), tree)

    def state(self, state: TrainState) -> TrainState:
        if self.mesh is None:
            return jax.tree.map(jax.device_put, state)
        if self.rule is None and _already_sharded(state):
            return state  # the caller placed it: keep its shardings
        return sharding_lib.place_state(state, self.mesh, self.rule)

    def layout(self, state: TrainState, split_data: bool = True) -> sharding_lib.Layout:
        if self.mesh is None:
            return sharding_lib.Layout()
        take = sharding_lib.ShardedTake(self.mesh, self.axis) if (
            self.split and split_data) else None
        keep = (sharding_lib.StateSharding.of(state)
                if self.rule is not None or _already_sharded(state) else None)
        return sharding_lib.Layout(self.batch, take, keep)

    def check_batch(self, batch_size: int) -> None:
        if self.mesh is not None and batch_size % self.devices:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {self.devices} "
                             f"devices of mesh axis {self.axis!r}; the global batch must split "
                             "evenly")


def _already_sharded(state) -> bool:
    return any(isinstance(getattr(leaf, "sharding", None), NamedSharding)
               and not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state))


def build_step(model, loss, optimizer, metrics, loss_weights, step, eval_step, outputs):
    """The built-in ``Supervised`` step, or the user's ``step`` wrapped as ``Custom``."""
    if step is not None:
        if not callable(step):
            raise TypeError(f"step must be a function step(state, batch, key) -> (state, "
                            f"metrics), got {type(step).__name__}")
        if eval_step is not None and not callable(eval_step):
            raise TypeError(f"eval_step must be a function eval_step(state, batch) -> "
                            f"metrics, got {type(eval_step).__name__}")
        return Custom(step, eval_step)
    if loss is None:
        raise TypeError("fit needs a loss (or a step= of your own)")
    return supervised(model, loss, optimizer, metrics, loss_weights, outputs)


def start(model, example, optimizer, seed, state, initial, hooks: Hooks, resume: bool,
          epochs: int, placement: Placement) -> tuple[TrainState, History]:
    """The state to start from: given, restored by a callback, or fresh; and the history.

    The state is placed before the callbacks see it, so a restored run comes back with
    the same shardings.
    """
    initial_params, initial_model_state = initial
    if model is not None:
        checks.check_model(model)
    if state is not None and initial_params is not None:
        raise ValueError("pass either state (to continue a run) or initial_params, not both")
    if state is None:
        if model is None:
            raise ValueError("a custom step without a model needs state= (a TrainState, e.g. "
                             "fnlearn.TrainState.create(params, opt_state))")
        if initial_params is not None:
            checks.check_params(initial_params, "initial_params")
        shape = checks.per_example_shape(example)
        try:
            state = init_state(model, optimizer, shape, seed=seed, params=initial_params,
                               model_state=initial_model_state)
        except Exception as error:  # noqa: BLE001 - re-raised with the shape that caused it
            raise checks.cannot_initialize(model, shape, error) from error
    else:
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
        # The training programs reuse the buffers of the state they are given: keep the
        # caller's own arrays intact.
        state = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array | np.ndarray) else a,
                             state)
    state, history = hooks.train_begin(placement.state(state), History(), resume)
    if int(state.epoch) >= epochs > 0 or (epochs == 0 and int(state.epoch) > 0):
        at = int(state.epoch)
        warnings.warn(f"the run is already at epoch {at} and epochs={epochs} is the epoch to "
                      f"stop at (a total, as in Keras), so nothing is trained; pass "
                      f"epochs={at + max(epochs, 1)} to train {max(epochs, 1)} more",
                      UserWarning, stacklevel=4)
    return state, history


def check_inputs(step, state: TrainState, x, y, name: str = "x") -> None:
    """The step on one example, abstractly: model, loss and label errors surface here."""
    if isinstance(step, Supervised):
        out = checks.model_output(step.model, state.params, state.model_state, x)
        if y is None:
            raise ValueError(f"{name} has no labels (y is None): the built-in step needs y, or "
                             "pass step= a custom step for unsupervised training")
        checks.check_losses(step.losses, y, out)
        return
    batch = (checks.example_of(x), None if y is None else checks.example_of(y))
    mask = jax.ShapeDtypeStruct((1,), np.bool_)
    try:
        jax.eval_shape(lambda s, b, m: step.train(s, b, m, jax.random.key(0)), state, batch, mask)
    except jax.errors.JAXTypeError as error:
        raise ValueError(f"the step {step.name()!r} is not jittable (Python control flow or "
                         f"side effects on traced values?): {error}") from error
    except (TypeError, ValueError) as error:
        if str(error).startswith("the step"):
            raise
        raise ValueError(f"the step {step.name()!r} fails on one example of {name}: "
                         f"{type(error).__name__}: {error}") from error


def warn_if_not_probabilities(step, state: TrainState, x) -> None:
    """``checks.warn_if_not_probabilities`` for an untrained state of a one-output model.

    A trained or restored state is past the point where the warning helps, and its
    confident outputs are no sign of unscaled inputs.
    """
    one_output = isinstance(step, Supervised) and [o for o, _, _ in step.losses] == [None]
    if int(state.step) == 0 and one_output and isinstance(x, np.ndarray | jax.Array):
        checks.warn_if_not_probabilities(step.model, state.params, state.model_state,
                                         np.asarray(x[:32]), step.losses[0][1])
