"""Parameters and data sharded over a mesh: rules, FSDP and tensor-parallel presets, placement.

A rule maps a parameter's path (``"dense_0/kernel"``), shape and the mesh to a
``PartitionSpec`` (None: replicated). Rules are written as ``(regex, spec)`` pairs
(``rules(...)``, the first pattern that matches the path wins, as t5x and EasyLM's
partition rules), or come from the presets:

* ``fsdp(axis="data")``: each large parameter is split along its largest dimension
  the axis divides (ZeRO-3 / FSDP): XLA gathers it where a layer needs it and
  reduce-scatters its gradient.
* ``tensor_parallel(axis="model")``: Megatron's split of Dense pairs: the first of a
  pair by columns (kernel ``P(None, axis)``, bias ``P(axis)``), the second by rows
  (kernel ``P(axis, None)``), so the hidden activations stay split between them.

``combine(tp, fsdp)`` applies rules in turn, a later rule sharding only dimensions an
earlier one left whole: on a ``("data", "model")`` mesh that is 2-D parallelism.
Optimizer state follows its parameters (Adam's moments are split as the parameter
they belong to). ``StateSharding`` keeps every leaf of a ``TrainState`` where it was
placed through the compiled step, and ``ShardedTake`` gathers a batch from a dataset
split over the data axis, exchanging only the batch (a masked local gather and a
reduce-scatter), so each device holds its part of the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rule = Callable[..., PartitionSpec | None]
"""``rule(path, shape, mesh, paths) -> PartitionSpec | None``; ``paths``: every parameter's."""


def path_name(path) -> str:
    """``"dense_0/kernel"`` for a pytree key path."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)


def rules(*pairs: tuple[str, PartitionSpec | None]) -> Rule:
    """A rule from ``(regex, spec)`` pairs: the first regex found in the path gives the spec."""
    compiled = [(re.compile(pattern), spec) for pattern, spec in pairs]

    def rule(path: str, shape, mesh, paths=()) -> PartitionSpec | None:
        for pattern, spec in compiled:
            if pattern.search(path):
                return spec
        return None

    return rule


def fsdp(axis: str = "data", min_size: int = 1024) -> Rule:
    """Splits each parameter of at least ``min_size`` scalars along its largest divisible axis."""

    def rule(path: str, shape, mesh, paths=()) -> PartitionSpec | None:
        count = mesh.shape[axis]
        if int(np.prod(shape)) < min_size or count == 1:
            return None
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[dim] % count == 0:
                return PartitionSpec(*[axis if d == dim else None for d in range(len(shape))])
        return None

    return rule


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def tensor_parallel(axis: str = "model", layers: Sequence[str] | None = None) -> Rule:
    """Megatron's column/row split of consecutive Dense layers over ``axis``.

    Args:
      axis: the mesh axis to split over.
      layers: the Dense layers' names in order (pairs: column, row, column, ...);
        default every layer with a rank-2 ``kernel``, in natural order of their names
        (``dense_2`` before ``dense_10``).
    """

    def rule(path: str, shape, mesh, paths=()) -> PartitionSpec | None:
        order = list(layers) if layers is not None else sorted(
            (p.rpartition("/")[0] for p, rank in paths if p.endswith("/kernel") and rank == 2),
            key=_natural)
        layer, _, leaf = path.rpartition("/")
        if layer not in order:
            return None
        column = order.index(layer) % 2 == 0
        count = mesh.shape[axis]
        if column and leaf == "kernel" and shape[-1] % count == 0:
            return PartitionSpec(None, axis)
        if column and leaf == "bias" and shape[0] % count == 0:
            return PartitionSpec(axis)
        if not column and leaf == "kernel" and shape[0] % count == 0:
            return PartitionSpec(axis, None)
        return None

    return rule


def combine(*parts: Rule) -> Rule:
    """Rules applied in turn; a later one shards only dimensions still whole (the largest
    one its axis divides, when the one it asks for is taken)."""

    def rule(path: str, shape, mesh, paths=()) -> PartitionSpec | None:
        spec: list = [None] * len(shape)
        for part in parts:
            for dim, axis in enumerate(part(path, shape, mesh, paths) or ()):
                if axis is None or axis in spec:
                    continue
                if spec[dim] is None:
                    spec[dim] = axis
                    continue
                free = [d for d in range(len(shape)) if spec[d] is None
                        and shape[d] % mesh.shape[axis] == 0]
                if free:
                    spec[max(free, key=lambda d: shape[d])] = axis
        return PartitionSpec(*spec) if any(s is not None for s in spec) else None

    return rule


def param_specs(params, mesh: Mesh, rule: Rule):
    """The ``PartitionSpec`` of every parameter under ``rule`` (replicated where it gives None).

    Raises:
      ValueError: a spec names an axis the mesh lacks, or splits a dimension unevenly.
    """
    paths = tuple((path_name(path), np.ndim(leaf))
                  for path, leaf in jax.tree_util.tree_leaves_with_path(params))

    def spec(path, leaf):
        name, shape = path_name(path), tuple(np.shape(leaf))
        found = rule(name, shape, mesh, paths) or PartitionSpec()
        for dim, axis in enumerate(found):
            if axis is None:
                continue
            if axis not in mesh.shape:
                raise ValueError(f"param_sharding: {name} is split over axis {axis!r}, which the "
                                 f"mesh (axes {tuple(mesh.shape)}) does not have")
            if dim >= len(shape) or shape[dim] % mesh.shape[axis]:
                raise ValueError(f"param_sharding: {name} of shape {shape} cannot be split over "
                                 f"axis {axis!r} ({mesh.shape[axis]} devices) along dimension "
                                 f"{dim}")
        return found

    return jax.tree_util.tree_map_with_path(spec, params)


def follow_params(tree, params, specs):
    """Specs for ``tree`` (an optimizer state): a leaf of a parameter's shape at a path that
    ends with that parameter's path gets its spec; everything else is replicated."""
    by_path = {}
    for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree.leaves(specs, is_leaf=lambda s: isinstance(
                                      s, PartitionSpec))):
        by_path[tuple(path)] = (tuple(np.shape(leaf)), spec)

    def spec(path, leaf):
        for start in range(len(path)):
            found = by_path.get(tuple(path[start:]))
            if found and found[0] == tuple(np.shape(leaf)):
                return found[1]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec, tree)


@dataclass(frozen=True)
class StateSharding:
    """Where every leaf of a state lives; hashable, so a compiled program can keep it there."""

    treedef: Any
    shardings: tuple

    @classmethod
    def of(cls, tree) -> StateSharding:
        leaves, treedef = jax.tree.flatten(tree)
        return cls(treedef, tuple(leaf.sharding for leaf in leaves))

    def constrain(self, tree):
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            return tree
        return jax.tree.unflatten(treedef, [jax.lax.with_sharding_constraint(leaf, sharding)
                                            for leaf, sharding in zip(leaves, self.shardings)])


def place_state(state, mesh: Mesh, rule: Rule | None):
    """``state`` on ``mesh``: parameters (and their optimizer state) split by ``rule``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    if rule is None:
        return jax.tree.map(lambda a: jax.device_put(a, replicated), state)
    specs = param_specs(state.params, mesh, rule)
    opt_specs = follow_params(state.opt_state, state.params, specs)

    def put(tree, tree_specs):
        return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree,
                            tree_specs, is_leaf=lambda s: isinstance(s, PartitionSpec))

    placed = jax.tree.map(lambda a: jax.device_put(a, replicated), state)
    return placed._replace(params=put(state.params, specs),
                           opt_state=put(state.opt_state, opt_specs))


def bytes_per_device(tree) -> dict[Any, int]:
    """Bytes of ``tree``'s arrays each device holds, from the arrays' own shards."""
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


@dataclass(frozen=True)
class ShardedTake:
    """``take(data, index)``: the rows ``index`` of data split over ``axis`` of ``mesh``.

    Each device gathers the rows it holds (zeros elsewhere) and a reduce-scatter over
    the axis gives every device its part of the batch: only the batch crosses devices.
    """

    mesh: Mesh
    axis: str = "data"

    def __call__(self, data, index):
        axis = self.axis

        def local(part, index):
            rows = part.shape[0]
            at = index - jax.lax.axis_index(axis) * rows
            mine = (at >= 0) & (at < rows)
            picked = part[jnp.clip(at, 0, rows - 1)]
            picked = jnp.where(mine.reshape(-1, *[1] * (part.ndim - 1)), picked,
                               jnp.zeros((), part.dtype))
            if picked.dtype == jnp.bool_:
                summed = jax.lax.psum_scatter(picked.astype(jnp.uint8), axis,
                                              scatter_dimension=0, tiled=True)
                return summed.astype(jnp.bool_)
            return jax.lax.psum_scatter(picked, axis, scatter_dimension=0, tiled=True)

        take = jax.shard_map(local, mesh=self.mesh, in_specs=(PartitionSpec(axis),
                                                              PartitionSpec()),
                             out_specs=PartitionSpec(axis), check_vma=False)
        return jax.tree.map(lambda a: take(a, index), data)


def split_rows(array, mesh: Mesh, axis: str = "data"):
    """``array`` padded to a multiple of the axis's devices and split over it by rows."""
    count = mesh.shape[axis]
    rows = array.shape[0]
    padded = -(-rows // count) * count
    if padded != rows:
        pad = [(0, padded - rows)] + [(0, 0)] * (array.ndim - 1)
        array = (np.pad(array, pad) if isinstance(array, np.ndarray) else jnp.pad(array, pad))
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec(axis)))


@dataclass(frozen=True)
class Layout:
    """How a compiled step is distributed: static, hashable, one per ``fit`` configuration.

    Attributes:
      batch: the ``NamedSharding`` each batch is constrained to (data parallel), or None.
      take: how a batch is gathered from data split over the data axis, or None (the
        data is whole on every device: plain indexing).
      state: where every leaf of the training state stays, or None (XLA decides).
    """

    batch: NamedSharding | None = None
    take: ShardedTake | None = None
    state: StateSharding | None = None

    def gather(self, data, index):
        if self.take is not None:
            return self.take(data, index)
        return jax.tree.map(lambda a: a[index], data)

    def constrain_batch(self, batch):
        if self.batch is None:
            return batch
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, self.batch), batch)

    def constrain_state(self, state):
        return state if self.state is None else self.state.constrain(state)
