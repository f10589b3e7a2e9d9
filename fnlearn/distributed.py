"""Data-parallel training on several devices and hosts, with ``jax.sharding``.

``fit(..., mesh=make_mesh())`` splits every batch across the mesh's devices and
keeps the parameters, optimizer state and dataset replicated; XLA inserts the
gradient all-reduce. Nothing here runs a training loop: these helpers only build
the mesh, join the processes of a multi-host run, and give each host its slice
of the data and the assembled global arrays that ``fit`` takes.

On several hosts every process runs the same program::

    fnlearn.distributed.initialize()          # from FNLEARN_* variables or the cluster
    mesh = fnlearn.distributed.make_mesh()    # every device of every host
    x_part, y_part = fnlearn.distributed.shard_for_process(x, y)
    x_all, y_all = fnlearn.distributed.global_arrays(x_part, y_part, len(x), mesh)
    state, history = fnlearn.fit(model, x_all, y_all, mesh=mesh, ...)

See ``docs/scaling.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

ENV_COORDINATOR = "FNLEARN_COORDINATOR"
ENV_NUM_PROCESSES = "FNLEARN_NUM_PROCESSES"
ENV_PROCESS_ID = "FNLEARN_PROCESS_ID"


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data", *,
              shape: Sequence[int] | None = None,
              axis_names: Sequence[str] | None = None) -> Mesh:
    """A mesh over ``devices``: one data axis, or a grid such as ``("data", "model")``.

    Args:
      devices: the devices to train on; default all of them, on every host.
      axis_name: the name of the one axis that the batch is split along.
      shape, axis_names: instead, a grid, e.g. ``shape=(4, 2), axis_names=("data",
        "model")``: the first axis splits batches and data, the others are for
        ``fit``'s ``param_sharding`` (tensor parallelism).

    Returns:
      A ``jax.sharding.Mesh`` with ``Auto`` axes: ``fit`` constrains the batch and the
      state with ``with_sharding_constraint`` and lets XLA propagate the rest, which
      ``Explicit`` axes (``jax.make_mesh``'s default) do not allow.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    shape = (len(devices),) if shape is None else tuple(int(s) for s in shape)
    names = (axis_name,) if axis_names is None else tuple(axis_names)
    if len(shape) != len(names):
        raise ValueError(f"make_mesh: shape {shape} and axis_names {names} differ in length")
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"make_mesh: shape {shape} needs {int(np.prod(shape))} devices, "
                         f"got {len(devices)}")
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, initialization_timeout: int = 300) -> bool:
    """Joins this process to a multi-host run (``jax.distributed.initialize``).

    Call it first, before any other JAX work. Each argument left out is read from
    ``FNLEARN_COORDINATOR`` (``host:port`` of process 0), ``FNLEARN_NUM_PROCESSES``
    and ``FNLEARN_PROCESS_ID``; whatever is still missing JAX detects from the
    cluster (Slurm, Open MPI, Cloud TPU, ...).

    Args:
      coordinator_address: ``host:port`` where process 0 runs the coordinator.
      num_processes: how many processes take part.
      process_id: this process's number, ``0 <= process_id < num_processes``.
      initialization_timeout: seconds to wait for every process to join.

    Returns:
      True once joined; False when nothing was given and no cluster was detected,
      so the same script also runs as a single process.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    configured = (coordinator_address, num_processes, process_id) != (None, None, None)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=initialization_timeout)
    except ValueError as error:
        if not configured and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            # JAX found no cluster to detect: this is a plain single-process run.
            return False
        raise ValueError(
            f"cannot start a multi-host run with coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}: {error} Pass the "
            f"missing values or set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and "
            f"{ENV_PROCESS_ID}.") from error
    return True


def process_shard(num_examples: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
    """The contiguous slice of ``num_examples`` examples that one process loads.

    Slices are in process order and differ in length by at most one, so their
    concatenation is the whole dataset in its original order.

    Args:
      num_examples: examples in the whole dataset.
      process_index: which process; default this one (``jax.process_index()``).
      process_count: how many processes; default ``jax.process_count()``.

    Returns:
      A ``slice`` into the dataset's leading axis.
    """
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    if num_examples < process_count:
        raise ValueError(f"{num_examples} examples cannot be split over {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return slice(num_examples * process_index // process_count,
                 num_examples * (process_index + 1) // process_count)


def shard_for_process(x, y):
    """This process's slice of ``(x, y)`` (see ``process_shard``).

    Args:
      x, y: the whole dataset's inputs and labels, or anything that slices lazily
        (a memory-mapped file), so a host reads only its part.

    Returns:
      ``(x[part], y[part])``.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    part = process_shard(len(x))
    return x[part], y[part]


def _process_mesh(mesh: Mesh) -> Mesh:
    """The mesh's devices as a (process, local device) grid, rows in process order."""
    by_process: dict[int, list[jax.Device]] = {}
    for device in mesh.devices.flat:
        by_process.setdefault(device.process_index, []).append(device)
    if sorted(by_process) != list(range(jax.process_count())):
        raise ValueError(f"the mesh must include devices of every one of the {jax.process_count()} "
                         f"processes, got devices of processes {sorted(by_process)}")
    counts = {len(devices) for devices in by_process.values()}
    if len(counts) != 1:
        raise ValueError("every process must hold the same number of the mesh's devices, got "
                         f"{ {p: len(d) for p, d in sorted(by_process.items())} }")
    grid = np.array([by_process[p] for p in sorted(by_process)])
    return Mesh(grid, ("process", "local"), axis_types=(AxisType.Auto, AxisType.Auto))


def global_array(local, num_examples: int, mesh: Mesh) -> jax.Array:
    """Assembles every process's slice (``process_shard``) into one array replicated on ``mesh``.

    Each host passes only the examples it loaded; the gather runs once, on the
    devices, and every device of the mesh ends up with the whole dataset, which
    is the layout ``fit`` trains from.

    Args:
      local: this process's slice, leading axis the examples.
      num_examples: examples in the whole dataset.
      mesh: the training mesh; each process must hold the same number of its devices.

    Returns:
      A ``jax.Array`` of ``num_examples`` examples with ``NamedSharding(mesh, P())``.
    """
    local = np.asarray(local)
    grid = _process_mesh(mesh)
    count = grid.devices.shape[0]
    parts = [process_shard(num_examples, p, count) for p in range(count)]
    mine = parts[jax.process_index()]
    if len(local) != mine.stop - mine.start:
        raise ValueError(f"process {jax.process_index()} passed {len(local)} examples; its slice "
                         f"of {num_examples} has {mine.stop - mine.start}")
    # Slices may differ by one example; pad to a common length so that every process
    # contributes an equal block, and drop the padding again inside the gather.
    longest = max(part.stop - part.start for part in parts)
    padded = np.zeros((longest, *local.shape[1:]), local.dtype)
    padded[:len(local)] = local
    blocks = jax.make_array_from_process_local_data(
        NamedSharding(grid, PartitionSpec("process")), padded,
        (count * longest, *local.shape[1:]))
    def unpad(b):
        return jnp.concatenate([b[p * longest:p * longest + part.stop - part.start]
                                for p, part in enumerate(parts)])

    gathered = jax.jit(unpad, out_shardings=NamedSharding(grid, PartitionSpec()))(blocks)
    return jax.device_put(gathered, NamedSharding(mesh, PartitionSpec()))


def global_arrays(x_local, y_local, num_examples: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """``global_array`` of inputs and labels: each host's slices in, the whole dataset out.

    Args:
      x_local, y_local: this process's slice of the inputs and labels.
      num_examples: examples in the whole dataset.
      mesh: the training mesh.

    Returns:
      ``(x, y)`` replicated on ``mesh``, ready for ``fit(..., mesh=mesh)``.
    """
    if len(x_local) != len(y_local):
        raise ValueError(f"x_local has {len(x_local)} examples but y_local has {len(y_local)}")
    return global_array(x_local, num_examples, mesh), global_array(y_local, num_examples, mesh)
