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
      state: a ``TrainState`` (or any pytree of arrays or ``ShapeDtypeStruct``s).

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
            "digest": _digest(state), "user": dict(metadata or {})}
    plain_history = {"history": history.history, "epoch": history.epoch,
                     "epoch_seconds": history.epoch_seconds}
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


def _structure_mismatch(saved: list[list], expected: list[list]) -> str:
    saved_by_path = {path: (shape, dtype) for path, shape, dtype in saved}
    expected_by_path = {path: (shape, dtype) for path, shape, dtype in expected}
    lines = []
    missing = [p for p in expected_by_path if p not in saved_by_path]
    extra = [p for p in saved_by_path if p not in expected_by_path]
    if missing:
        lines.append(f"  missing from the checkpoint: {', '.join(missing)}")
    if extra:
        lines.append(f"  in the checkpoint but not in the model: {', '.join(extra)}")
    for path, (shape, dtype) in expected_by_path.items():
        if path in saved_by_path and saved_by_path[path] != (shape, dtype):
            saved_shape, saved_dtype = saved_by_path[path]
            lines.append(f"  {path}: checkpoint has {tuple(saved_shape)} {saved_dtype}, "
                         f"model expects {tuple(shape)} {dtype}")
    return "\n".join(lines)


def restore_checkpoint(directory: str | Path, template_state: TrainState,
                       step: int | None = None) -> tuple[TrainState, History, dict[str, Any]]:
    """Restores a checkpoint into the structure, shapes and devices of ``template_state``.

    Args:
      directory: the run's checkpoint directory.
      template_state: a ``TrainState`` of the same model and optimizer (e.g. from
        ``fnlearn.init_state``); only its structure, shapes, dtypes and shardings are used.
      step: the epoch whose checkpoint to restore; the latest if None.

    Returns:
      ``(state, history, metadata)``: the saved ``TrainState``, ``History`` and the
      ``metadata`` dict given to ``save_checkpoint``.

    Raises:
      CheckpointError: no such checkpoint; a checkpoint of a different model
        structure (the differing leaves are named); corrupt or truncated files
        (the checkpoint's path is named).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    steps = _committed_steps(directory) if directory.is_dir() else []
    if step is None:
        if not steps:
            raise CheckpointError(f"no checkpoint found in {directory}")
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"no checkpoint for epoch {step} in {directory}; "
                              f"available: {steps or 'none'}")
    path = directory / str(step)
    with _manager(directory) as manager:
        try:
            meta = manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("its metadata is not an fnlearn checkpoint's")
        except Exception as error:  # noqa: BLE001 - any read failure means a damaged checkpoint
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated: cannot read its metadata "
                f"({type(error).__name__}: {error})") from error

        expected = describe_structure(template_state)
        if meta["fingerprint"] != _fingerprint(expected):
            raise CheckpointError(
                f"checkpoint {path} was saved from a different model or optimizer "
                f"structure:\n{_structure_mismatch(meta['structure'], expected)}")

        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
            state, plain = restored.state, restored.history
            history = History(dict(plain["history"]), list(plain["epoch"]),
                              list(plain["epoch_seconds"]))
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated: cannot read its arrays or "
                f"history ({type(error).__name__}: {error})") from error
    if _digest(state) != meta["digest"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its arrays do not match the digest saved with them")
    return TrainState(*state), history, meta["user"]
