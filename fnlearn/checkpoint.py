"""Save and restore a whole training run: ``TrainState``, ``History`` and metadata, with Orbax.

A checkpoint directory holds one subdirectory per saved epoch (``<dir>/3`` is the
state after 3 epochs), managed by ``orbax.checkpoint.CheckpointManager``: it keeps
the last ``keep`` of them and commits each one atomically (written under a
temporary name, renamed when complete), so a process killed mid-save leaves the
previous checkpoint untouched and no half-written one that looks complete.

Each checkpoint has three items: ``state`` (the ``TrainState`` pytree), ``history``
(``History`` as plain lists) and ``meta``: the epoch and step, every leaf's path,
shape and dtype with a fingerprint of them, a SHA-256 digest of the array bytes,
and whatever the caller adds. Restoring compares the leaf list with the caller's
template before reading any array (a different model is refused, naming the
leaves that differ) and checks the digest after (flipped bytes are refused too,
not handed back as weights).

Orbax is imported inside the functions: ``import fnlearn`` stays light.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fnlearn.state import History, TrainState

FORMAT = "fnlearn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is restored into."""


def _leaves(state: TrainState) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def describe_structure(state: TrainState) -> list[list]:
    """Every leaf of ``state`` as ``[path, shape, dtype]``: what a checkpoint must match.

    Args:
      state: a ``TrainState`` (or any pytree of arrays or ``ShapeDtypeStruct`` values).

    Returns:
      A JSON-friendly list, one ``[path, shape, dtype]`` per leaf in tree order.
    """
    return [[path, list(np.shape(leaf)), str(np.dtype(leaf.dtype))]
            for path, leaf in _leaves(state)]


def _fingerprint(structure: list[list]) -> str:
    return hashlib.sha256(json.dumps(structure).encode()).hexdigest()[:16]


def _digest(state: TrainState) -> str:
    sha = hashlib.sha256()
    for _, leaf in _leaves(state):
        sha.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return sha.hexdigest()


def _manager(directory: str | Path, keep: int | None = None):
    import orbax.checkpoint as ocp

    # Synchronous saves: when save_checkpoint returns, the checkpoint is committed,
    # which is what a training loop that may be killed next needs.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_checkpoint(directory: str | Path, state: TrainState, history: History | None = None,
                    *, keep: int | None = 3, metadata: dict[str, Any] | None = None,
                    number: int | None = None) -> Path:
    """Saves ``state`` and ``history`` as the checkpoint of epoch ``state.epoch``.

    Args:
      directory: the run's checkpoint directory (created if missing).
      state: the ``TrainState`` to save.
      history: the run's ``History`` so far (saved as plain lists).
      keep: how many of the latest checkpoints to keep; older ones are deleted.
        ``None`` keeps all.
      metadata: extra JSON-serializable values to store (e.g. the best metric so far).
      number: the checkpoint's number (its subdirectory, what ``restore_checkpoint``'s
        ``step`` names); default the epoch. Checkpoints taken within epochs are
        numbered by ``state.step``.

    Returns:
      The path of the committed checkpoint.

    Raises:
      CheckpointError: if ``directory`` already has a checkpoint for this epoch.
    """
    import orbax.checkpoint as ocp

    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    history = history or History()
    epoch = int(state.epoch)
    number = epoch if number is None else int(number)
    structure = describe_structure(state)
    meta = {"format": FORMAT, "version": VERSION, "epoch": epoch, "step": int(state.step),
            "structure": structure, "fingerprint": _fingerprint(structure),
            "digest": _digest(state), "user": dict(metadata or {}),
            # Digests of the subtrees restore_params reads alone.
            "digests": {"params": _digest(state.params),
                        "model_state": _digest(state.model_state)}}
    plain_history = {"history": history.history, "epoch": history.epoch,
                     "epoch_seconds": history.epoch_seconds, "in_progress": history.in_progress}
    with _manager(directory, keep) as manager:
        if number in manager.all_steps():
            raise CheckpointError(
                f"{Path(directory) / str(number)} already exists: a checkpoint for "
                f"{'epoch' if number == epoch else 'step'} {number} was saved before (another "
                "run in the same directory?)")
        manager.save(number, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            history=ocp.args.JsonSave(plain_history),
            meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    return Path(directory) / str(number)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest committed checkpoint in ``directory``, or None if there is none.

    Half-written checkpoints (a save that was killed) are not counted.
    """
    if not Path(directory).is_dir():
        return None
    steps = _committed_steps(directory)
    return Path(directory) / str(steps[-1]) if steps else None


def delete_checkpoints(directory: str | Path) -> None:
    """Deletes every checkpoint in ``directory`` (other files there are left alone)."""
    with _manager(directory) as manager:
        for step in manager.all_steps():
            manager.delete(step)


def _committed_steps(directory: str | Path) -> list[int]:
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


# Leaves listed one per line in a structure mismatch before the rest are counted.
_MISMATCH_LINES = 8


def _structure_mismatch(saved: list[list], expected: list[list]) -> str:
    saved_by_path = {path: (shape, dtype) for path, shape, dtype in saved}
    expected_by_path = {path: (shape, dtype) for path, shape, dtype in expected}
    differences = [(p, "missing from the checkpoint") for p in expected_by_path
                   if p not in saved_by_path]
    differences += [(p, "in the checkpoint but not in the model") for p in saved_by_path
                    if p not in expected_by_path]
    for path, (shape, dtype) in expected_by_path.items():
        if path in saved_by_path and saved_by_path[path] != (shape, dtype):
            saved_shape, saved_dtype = saved_by_path[path]
            differences.append((path, f"checkpoint has {tuple(saved_shape)} {saved_dtype}, "
                                      f"model expects {tuple(shape)} {dtype}"))
    # Another optimizer changes every .opt_state leaf (hundreds of lines): summarize them.
    optimizer = [d for d in differences if d[0].startswith(".opt_state")]
    others = [d for d in differences if not d[0].startswith(".opt_state")]
    lines = [f"  {path}: {what}" for path, what in others[:_MISMATCH_LINES]]
    if len(others) > _MISMATCH_LINES:
        lines.append(f"  ... and {len(others) - _MISMATCH_LINES} more leaves")
    if optimizer:
        lines.append(f"  optimizer state differs (trained with another optimizer?): "
                     f"{len(optimizer)} leaves, the first:")
        lines += [f"    {path}: {what}" for path, what in optimizer[:3]]
        lines.append("  to continue training, build the template with the optimizer the run "
                     "was trained with; for inference, fnlearn.restore_params(directory, model, "
                     "input_shape) reads the parameters without any optimizer")
    return "\n".join(lines)


def _epoch_to_restore(directory: Path, epoch: int | None) -> tuple[int, Path]:
    epochs = _committed_steps(directory) if directory.is_dir() else []
    if epoch is None:
        if not epochs:
            raise CheckpointError(f"no checkpoint found in {directory}")
        epoch = epochs[-1]
    elif epoch not in epochs:
        raise CheckpointError(f"no checkpoint for epoch {epoch} in {directory}; "
                              f"available: {epochs or 'none'}")
    return epoch, directory / str(epoch)


def _read_meta(manager, epoch: int, path: Path) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    try:
        meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("its metadata is not an fnlearn checkpoint's")
    except Exception as error:  # noqa: BLE001 - any read failure means a damaged checkpoint
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated: cannot read its metadata "
            f"({type(error).__name__}: {error})") from error
    return meta


def restore_checkpoint(directory: str | Path, template_state: TrainState,
                       epoch: int | None = None, *,
                       step: int | None = None) -> tuple[TrainState, History, dict[str, Any]]:
    """Restores a checkpoint into the structure, shapes and devices of ``template_state``.

    Args:
      directory: the run's checkpoint directory.
      template_state: a ``TrainState`` of the same model and optimizer (e.g. from
        ``fnlearn.init_state``); only its structure, shapes, dtypes and shardings are used.
      epoch: restore the state after this many completed epochs (the checkpoint
        ``<directory>/<epoch>``, whose ``state.epoch`` is ``epoch``); the latest if None.
      step: deprecated name of ``epoch`` (it never meant ``state.step``).

    Returns:
      ``(state, history, metadata)``: the saved ``TrainState``, ``History`` and the
      ``metadata`` dict given to ``save_checkpoint``.

    Raises:
      CheckpointError: no such checkpoint; a checkpoint of a different model
        structure (the differing leaves are named); corrupt or truncated files
        (the checkpoint's path is named).
    """
    import orbax.checkpoint as ocp

    if step is not None:
        warnings.warn("restore_checkpoint(step=...) is deprecated: pass epoch=... (the "
                      "number of completed epochs, not state.step)", DeprecationWarning,
                      stacklevel=2)
        if epoch is not None and epoch != step:
            raise ValueError(f"pass epoch or its deprecated alias step, not both "
                             f"(got epoch={epoch}, step={step})")
        epoch = step
    directory = Path(directory)
    epoch, path = _epoch_to_restore(directory, epoch)
    with _manager(directory) as manager:
        meta = _read_meta(manager, epoch, path)
        expected = describe_structure(template_state)
        if meta["fingerprint"] != _fingerprint(expected):
            raise CheckpointError(
                f"checkpoint {path} was saved from a different model or optimizer "
                f"structure:\n{_structure_mismatch(meta['structure'], expected)}")

        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        try:
            restored = manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
            state, plain = restored.state, restored.history
            history = History(dict(plain["history"]), list(plain["epoch"]),
                              list(plain["epoch_seconds"]), plain.get("in_progress"))
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated: cannot read its arrays or "
                f"history ({type(error).__name__}: {error})") from error
    if _digest(state) != meta["digest"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its arrays do not match the digest saved with them")
    return TrainState(*state), history, meta["user"]


def restore_params(directory: str | Path, model, input_shape, *,
                   epoch: int | None = None) -> tuple[Any, Any]:
    """Restores only the parameters and model state of a checkpoint, for inference.

    Reads the ``params`` and ``model_state`` subtrees alone (an Orbax partial
    restore): the optimizer that trained them is neither needed nor read. Their
    leaves are checked against ``model`` before reading, and their bytes against
    the digest saved with them.

    Args:
      directory: the run's checkpoint directory.
      model: the model the checkpoint was trained with (``fnlearn.nn``).
      input_shape: its per-example input shape.
      epoch: as for ``restore_checkpoint``; the latest if None.

    Returns:
      ``(params, model_state)``; ``model_state`` is ``{}`` for a model without any.

    Raises:
      CheckpointError: as for ``restore_checkpoint``.
    """
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from fnlearn.nn.core import init_with_state

    directory = Path(directory)
    epoch, path = _epoch_to_restore(directory, epoch)
    _, params, model_state = jax.eval_shape(
        lambda: init_with_state(model, jax.random.key(0), tuple(input_shape)))
    template = {"params": params, "model_state": model_state}
    expected = [[f".{name}{p}", shape, dtype] for name in template
                for p, shape, dtype in describe_structure(template[name])]
    with _manager(directory) as manager:
        meta = _read_meta(manager, epoch, path)
        saved = [leaf for leaf in meta["structure"]
                 if leaf[0].startswith((".params", ".model_state"))]
        if sorted(map(str, saved)) != sorted(map(str, expected)):
            raise CheckpointError(f"checkpoint {path} was saved from a different model:\n"
                                  f"{_structure_mismatch(saved, expected)}")
        try:
            restored = manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    template, restore_args=ocp.checkpoint_utils.construct_restore_args(template),
                    partial_restore=True))).state
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated: cannot read its "
                                  f"parameters ({type(error).__name__}: {error})") from error
    restored = jax.tree.map(jnp.asarray, {name: restored[name] for name in template})
    for name, digest in meta.get("digests", {}).items():
        if _digest(restored[name]) != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt: its {name} do not match the "
                                  "digest saved with them")
    return restored["params"], restored["model_state"]
