"""``fit`` from a data source: the host streams blocks of batches to the compiled step.

``fit(model, source, None, ...)`` comes here (``fnlearn.train.fit`` dispatches). The
epoch's order is ``fnlearn.step.epoch_batches`` (the permutation in-memory training
draws from ``state.key`` and ``state.epoch``), pulled to the host once per epoch.
Each call runs ``steps_per_call`` batches with ``fnlearn.step.train_steps``: the
block of examples is an array ``(steps, batch, ...)`` and row ``i`` of the scan takes
``block[i]``, so a streamed run computes what an in-memory run computes, bit for bit.
While the device runs one block, a background thread reads and places the next.

With a mesh, the block's batch axis is sharded over the mesh's first axis and
each process reads only the columns (examples of every global batch) its own
devices hold, assembled with ``jax.make_array_from_process_local_data``.

A callback with ``save_every_steps`` (``ModelCheckpoint``) gets
``on_steps_end(state, history, position, sums)`` every that many batches of an
epoch; ``position`` (batches done in the epoch) and the epoch's running sums are
saved with the state, and a resumed run skips that many rows of the epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial

import jax
import numpy as np

from fnlearn import cache, checks, sources
from fnlearn import losses as losses_lib
from fnlearn import step as step_lib
from fnlearn import train as train_lib
from fnlearn.state import NonFiniteLossError


def _block_placement(sharding):
    """``(place, columns)``: how a host block becomes device arrays, and which columns to read."""
    if sharding is None:
        return (lambda host: tuple(jax.device_put(a) for a in host)), None
    from jax.sharding import NamedSharding, PartitionSpec

    block = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))

    def place(host):
        x, y, mask = host
        rows, width = mask.shape
        global_width = width * jax.process_count()
        return tuple(jax.make_array_from_process_local_data(
            block, a, (rows, global_width, *a.shape[2:])) for a in (x, y, mask))

    return place, block


def _columns(block, batch_size: int, rows: int) -> slice:
    """The columns of every global batch that this process's devices hold under ``block``."""
    if block is None:
        return slice(0, batch_size)
    spans = [s[1] for s in block.addressable_devices_indices_map((rows, batch_size)).values()]
    start = min(s.start or 0 for s in spans)
    stop = max(batch_size if s.stop is None else s.stop for s in spans)
    if (stop - start) * jax.process_count() != batch_size:
        raise ValueError(f"each process must hold an equal, contiguous part of every batch of "
                         f"{batch_size}; this one holds columns {start}:{stop}")
    return slice(start, stop)


def _probe(source, n: int):
    """The first (up to 32) examples, read item by item, to check shapes before compiling."""
    items = [source[i] for i in range(min(n, 32))]
    x, y = np.stack([np.asarray(a) for a, _ in items]), np.stack([np.asarray(b) for _, b in items])
    return checks.as_host_array("source inputs", x), checks.as_host_array("source labels", y)


def _restored_position(callbacks) -> tuple[int, tuple | None]:
    """Batches done in the restored epoch and their sums, from a mid-epoch checkpoint."""
    for callback in callbacks:
        restored = getattr(callback, "restored_position", None)
        if restored and restored[0]:
            return int(restored[0]), sums_from_plain(restored[1])
    return 0, None


def _evaluate_source(val, state, run, place):
    """Validation loss and metrics over a source, read in chunks of ``EVAL_BATCH_SIZE``."""
    static = run.static
    total = count = None
    n, size = len(val), step_lib.EVAL_BATCH_SIZE
    for begin in range(0, n, size):
        x, y = sources.read_examples(val, np.arange(begin, min(n, begin + size)))
        loss, metrics = train_lib._compiled_evaluate(
            state.params, state.model_state, place(x), place(y), model=static["model"],
            loss_fn=static["loss_fn"], metric_fns=static["metric_fns"])
        values = np.array([float(loss), *(float(m) for m in metrics)]) * len(x)
        total = values if total is None else total + values
        count = len(x) if count is None else count + len(x)
    means = total / count
    return {"val_loss": means[0], "val_metrics": tuple(means[1:])}


def _evaluate(validation, state, run, place):
    if validation is None:
        return {}
    if isinstance(validation, tuple):
        static = run.static
        loss, metrics = train_lib._compiled_evaluate(
            state.params, state.model_state, *validation, model=static["model"],
            loss_fn=static["loss_fn"], metric_fns=static["metric_fns"])
        return {"val_loss": loss, "val_metrics": metrics}
    return _evaluate_source(validation, state, run, place)


def _validation(validation_data, keys, model, state, loss_fn, place):
    if validation_data is None:
        return None
    if isinstance(validation_data, tuple | list) and len(validation_data) == 2:
        x, y = train_lib._validation(model, state, validation_data, loss_fn)
        return place(x), place(y)
    # The training source's keys serve a validation source whose items are dicts too.
    dict_items = (not isinstance(validation_data, sources.Stream)
                  and hasattr(validation_data, "__getitem__") and len(validation_data) > 0
                  and isinstance(validation_data[0], dict))
    val = sources.stream(validation_data, keys=keys if dict_items else None).source
    x, y = _probe(val, len(val))
    checks.check_model_input(model, state.params, state.model_state, x, loss_fn, y)
    return val


def fit_stream(model, x, *, loss, optimizer, metrics=(), epochs=1, batch_size=32, shuffle=True,
               validation_data=None, validation_split=0.0, seed=0, verbose=1, callbacks=(),
               resume=False, initial_params=None, initial_model_state=None, state=None,
               mesh=None, progress_every=50):
    """``fit`` for a source or ``Stream`` ``x`` (see ``fnlearn.train.fit`` for the arguments)."""
    cache.enable_by_default()
    checks.check_epochs(epochs, verbose)
    stream = sources.stream(x)
    if validation_split:
        if not isinstance(stream.source, sources.ArraySource):
            raise ValueError("validation_split needs arrays; with a source pass validation_data "
                             "(a source or a pair of arrays)")
        x_train, y_train, validation_data = train_lib._split_validation(
            stream.source.x, stream.source.y, validation_data, validation_split)
        stream = dataclasses.replace(stream, source=sources.ArraySource(x_train, y_train))
    source, n = stream.source, len(stream.source)
    keys = source.keys if isinstance(source, sources.KeyedSource) else None
    batch_size = checks.check_batch_size(batch_size, n)
    loss_fn = losses_lib.get_loss(loss)
    names, metric_fns = train_lib._metrics(metrics)
    optimizer = checks.resolve_optimizer(optimizer)
    probe_x, probe_y = _probe(source, n)
    state, history = train_lib._start(model, probe_x, optimizer, checks.check_seed(seed), state,
                                      (initial_params, initial_model_state), callbacks, resume,
                                      epochs)
    checks.check_model_input(model, state.params, state.model_state, probe_x, loss_fn, probe_y)
    checks.warn_if_not_probabilities(model, state.params, state.model_state, probe_x, loss_fn)
    place, sharding = train_lib._place(mesh)
    train_lib._check_mesh(sharding, batch_size)
    validation = _validation(validation_data, keys, model, state, loss_fn, place)
    state = jax.tree.map(place, state)
    steps = -(-n // batch_size)
    rows = min(stream.steps_per_call, steps)
    # Calls end at every multiple of any callback's period: of their greatest common divisor.
    save_every = math.gcd(*(c.save_every_steps for c in callbacks
                            if getattr(c, "save_every_steps", None))) or None
    run = train_lib._Run(dict(model=model, loss_fn=loss_fn, metric_fns=metric_fns,
                              optimizer=optimizer, sharding=sharding), names, None, steps,
                         verbose, progress_every)
    place_block, block_sharding = _block_placement(sharding)
    columns = _columns(block_sharding, batch_size, rows)
    rows_index = place(np.arange(rows, dtype=np.int32))
    position, sums = _restored_position(callbacks)
    epoch = int(state.epoch)
    while epoch < epochs:
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
        started = time.perf_counter()
        index, mask = jax.device_get(train_lib._compiled_chunks(
            state, n, batch_size, shuffle, steps))
        plan = sources.chunks(steps, position, rows, save_every)
        state, sums = _run_epoch(run, state, source, np.asarray(index), np.asarray(mask), plan,
                                 rows, columns, place_block, rows_index, place, stream,
                                 sums, callbacks, history, save_every)
        state = state._replace(epoch=state.epoch + 1)
        values = {**step_lib._means(sums), **_evaluate(validation, state, run, place)}
        logs = run.logs(jax.device_get(values))
        seconds = time.perf_counter() - started
        history.append(epoch, logs, seconds)
        run.report(logs, seconds)
        stop = [bool(c.on_epoch_end(epoch, state, logs, history)) for c in callbacks
                if hasattr(c, "on_epoch_end")]
        epoch, position, sums = epoch + 1, 0, None
        if any(stop):
            break
    for callback in callbacks:
        if hasattr(callback, "on_train_end"):
            state = callback.on_train_end(state, history) or state
    return state, history


def _add(sums, more):
    if sums is None:
        return more
    return jax.tree.map(lambda a, b: np.float32(a) + np.float32(b), sums, more)


def _run_epoch(run, state, source, index, mask, plan, rows, columns, place_block, rows_index,
               place, stream, sums, callbacks, history, save_every):
    """Runs the calls of ``plan``; returns the state and the epoch's summed loss and metrics."""
    static = run.static
    call = partial(train_lib._compiled_train_steps, model=static["model"],
                   loss_fn=static["loss_fn"], metric_fns=static["metric_fns"],
                   optimizer=static["optimizer"], sharding=static["sharding"])
    if run.verbose == 1:
        from tqdm.auto import tqdm

        run.bar = tqdm(total=run.steps, initial=plan[0][0] if plan else run.steps, unit="step",
                       leave=True, dynamic_ncols=True)
    stopped = place(np.bool_(False))
    pending = []

    def settle(state):
        """Fetches the finished calls' sums; raises at the first non-finite loss."""
        nonlocal sums
        for begin, end, call_sums, bad in jax.device_get(pending):
            if bad >= 0:
                if run.verbose == 1:
                    run.bar.close()
                raise NonFiniteLossError(
                    f"loss became NaN or inf at epoch {int(state.epoch) + 1}, step "
                    f"{begin + int(bad) + 1} of {run.steps}; training stopped: the error's "
                    ".state (and any checkpoint) is from before that step. Lower the learning "
                    "rate or check the data for extreme values.", state)
            sums = _add(sums, call_sums)
            if run.verbose == 1:
                means = step_lib._means(sums)
                run.bar.n = end
                run.bar.set_postfix({"loss": f"{float(means['loss']):.4f}", **{
                    n: f"{float(v):.4f}" for n, v in zip(run.names, means["metrics"])}},
                    refresh=True)
        pending.clear()

    for begin, end, (x, y, m) in sources.blocks(source, index, mask, plan, rows, columns,
                                                  place_block, stream.workers, stream.prefetch):
        state, call_sums, bad = call(state, x, y, rows_index, m, stopped=stopped)
        stopped = stopped | (bad >= 0)
        pending.append((begin, end, call_sums, bad))
        # Fetching the previous call's results waits for it, not for the one just queued.
        if len(pending) > 1:
            last = pending.pop()
            settle(state)
            pending.append(last)
        if save_every and end % save_every == 0 and end < run.steps:
            settle(state)
            for callback in callbacks:
                period = getattr(callback, "save_every_steps", None)
                if period and end % period == 0:
                    callback.on_steps_end(state, history, end, _plain(sums))
    settle(state)
    return state, sums


def _plain(sums) -> list:
    """The running sums as JSON-friendly floats (float32 values, exactly)."""
    loss_sum, metric_sums, count = sums
    return [float(loss_sum), [float(s) for s in metric_sums], float(count)]


def sums_from_plain(plain) -> tuple:
    """The inverse of ``_plain``: the sums a checkpoint stored, as float32 scalars."""
    loss_sum, metric_sums, count = plain
    return (np.float32(loss_sum), tuple(np.float32(s) for s in metric_sums), np.float32(count))

