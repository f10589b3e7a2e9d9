"""Model versions: the numbered folders under a base path, loaded, swapped and unloaded live.

Every ``--file_system_poll_wait_seconds`` the server scans each model's base path.
A folder ``BASE/N/`` (digits only) is version ``N``; it must hold one file written by
``fnlearn.export.export_model`` (any name; names starting with ``.`` are ignored, so a
file can be written under a hidden name and renamed into place). The version policy
picks the versions to serve among the folders found; a new one is loaded and compiled
in a thread while the others keep serving, then takes requests, and only then are the
versions the policy no longer wants unloaded, after finishing the requests they hold.
A file that does not load (still being copied, so truncated, or corrupt) is never
served: its version is reported ``END`` with the reason, and tried again once the
file changes. The states are TF Serving's: ``LOADING``, ``AVAILABLE``, ``UNLOADING``,
``END``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fnlearn.compiler import program
from fnlearn.export import ExportError, load_exported
from fnlearn.serve.batching import DynamicBatcher, Rows
from fnlearn.serve.config import ModelSpec
from fnlearn.serve.protocol import RequestError, metadata_document
from fnlearn.signature import ServingSignature, pack, unpack

logger = logging.getLogger("fnlearn.serve")
_VERSION_FOLDER = re.compile(r"[0-9]+")


@dataclass
class Servable:
    """One loaded version of a model, compiled, with its own batcher once serving.

    Attributes:
      name, version, path: the model's name, the version number and its file.
      call: the compiled function (a padded batch in, outputs out): an array in and out
        for one input and one output, a tuple of arrays (in the signature's order) for
        several.
      signature: the named inputs and outputs, each example's shape and dtype.
      metadata: TF Serving's metadata document for this version.
      input_range: ``[low, high]`` of the input values, if the export names one.
      batcher: the version's ``DynamicBatcher`` (None until the server starts it).
    """

    name: str
    version: int
    path: Path
    call: Callable[[Rows], Rows]
    signature: ServingSignature
    metadata: dict
    input_range: list | None = None
    batcher: DynamicBatcher | None = None


def load_version(name: str, version: int, path: Path,
                 batch_sizes: tuple[int, ...]) -> Servable:
    """Loads an export and compiles it for each padded batch size (run it in a thread).

    Raises:
      FileNotFoundError, fnlearn.export.ExportError: the file is gone, truncated or corrupt.
    """
    loaded = load_exported(path)
    exported, meta, signature = loaded.exported, loaded.meta, loaded.signature

    def flat(*arrays):
        outputs = exported.call(pack(signature.input_structure, signature.input_names, arrays))
        return unpack(signature.output_structure, signature.output_names, outputs)

    compiled = program(flat)

    def call(x: Rows) -> Rows:
        outputs = [np.asarray(y) for y in compiled(*(x if isinstance(x, tuple) else (x,)))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    for size in batch_sizes:  # compiled before any request arrives
        example = tuple(np.zeros((size, *info.shape), info.dtype) for info in signature.inputs)
        call(example[0] if len(example) == 1 else example)
    metadata = metadata_document(name, str(version), signature, meta)
    return Servable(name, version, Path(path), call, signature, metadata,
                    meta.get("input_range"))


Loader = Callable[[str, int, Path], Servable]


@dataclass
class Model:
    """A model's live versions: what is served, each version's state, files that did not load.

    Attributes:
      spec: what to serve.
      served: the versions taking requests.
      states: ``version -> (state, error_code, error_message)``, as the status reports them.
      refused: ``version -> (size, mtime)`` of a file that did not load; tried again once
        the file changes.
    """

    spec: ModelSpec
    served: dict[int, Servable] = field(default_factory=dict)
    states: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    refused: dict[int, tuple[int, int]] = field(default_factory=dict)


def scan_base_path(base: Path) -> tuple[dict[int, Path], dict[int, str]]:
    """The version folders under ``base``: ``({version: its file}, {version: problem})``.

    Folders without a file yet are skipped; one with several files is a problem.

    Raises:
      FileNotFoundError: ``base`` is not a folder.
    """
    files, problems = {}, {}
    with os.scandir(base) as entries:
        folders = [e for e in entries if _VERSION_FOLDER.fullmatch(e.name) and e.is_dir()]
    for folder in folders:
        with os.scandir(folder.path) as entries:
            inside = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
        if len(inside) == 1:
            files[int(folder.name)] = Path(folder.path) / inside[0]
        elif inside:
            problems[int(folder.name)] = (f"version folder {folder.path} holds {len(inside)} "
                                          f"files {inside}: it must hold one export")
    return files, problems


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def _wanted(model: Model, files: dict[int, Path]) -> set[int]:
    usable = [v for v, path in files.items()
              if v in model.served or model.refused.get(v) != _fingerprint(path)]
    return model.spec.policy.select(usable)


def _refuse(model: Model, version: int, fingerprint: tuple[int, int], error: Exception) -> None:
    # The fingerprint from before the load: a copy finishing meanwhile changes it, and the
    # whole file is tried at the next poll.
    model.refused[version] = fingerprint
    model.states[version] = ("END", "DATA_LOSS", str(error))
    logger.warning("model %r version %d not loaded: %s", model.spec.name, version, error)


def load_initial(specs: list[ModelSpec], load: Loader) -> dict[str, Model]:
    """Every model with the versions its policy wants loaded (before the server starts).

    Raises:
      FileNotFoundError, fnlearn.export.ExportError: a model's file (the one-file form)
        or base path is missing, or that file does not load.
    """
    models = {}
    for spec in specs:
        model = models[spec.name] = Model(spec)
        if spec.file is not None:
            model.served[spec.version] = load(spec.name, spec.version, spec.file)
            model.states[spec.version] = ("AVAILABLE", "OK", "")
            continue
        if not spec.base_path.is_dir():
            raise FileNotFoundError(f"model {spec.name!r}: no folder at base path "
                                    f"{spec.base_path}")
        files, problems = scan_base_path(spec.base_path)
        for version, problem in problems.items():
            model.states[version] = ("END", "FAILED_PRECONDITION", problem)
        for version in sorted(_wanted(model, files)):
            fingerprint = _fingerprint(files[version])
            try:
                model.served[version] = load(spec.name, version, files[version])
                model.states[version] = ("AVAILABLE", "OK", "")
            except (OSError, ExportError) as error:
                _refuse(model, version, fingerprint, error)
        if not model.served:
            logger.warning("model %r: no version to serve yet under %s (policy %s)", spec.name,
                           spec.base_path, spec.policy.describe())
    return models


async def refresh(model: Model, load: Loader,
                  start: Callable[[Servable], Awaitable[None]]) -> None:
    """One poll of the model's base path: load what the policy now wants, then unload the rest.

    Args:
      model: the model (its ``spec.base_path`` is scanned).
      load: loads and compiles one version (run in a thread).
      start: makes a loaded version ready for requests (starts its batcher).
    """
    spec = model.spec
    try:
        files, problems = await asyncio.to_thread(scan_base_path, spec.base_path)
    except OSError as error:  # a base path being moved: keep serving what is loaded
        logger.warning("model %r: cannot scan %s: %s", spec.name, spec.base_path, error)
        return
    for version, problem in problems.items():
        if version not in model.served and model.states.get(version, ("",))[0] != "END":
            model.states[version] = ("END", "FAILED_PRECONDITION", problem)
            logger.warning("model %r: %s", spec.name, problem)
    for version in sorted(_wanted(model, files) - set(model.served)):
        model.states[version] = ("LOADING", "OK", "")
        fingerprint = _fingerprint(files[version])
        try:
            servable = await asyncio.to_thread(load, spec.name, version, files[version])
        except (OSError, ExportError) as error:
            _refuse(model, version, fingerprint, error)
            continue
        await start(servable)
        model.served[version] = servable
        model.states[version] = ("AVAILABLE", "OK", "")
        logger.info("model %r version %d is available", spec.name, version)
    # Among the versions now serving, what the policy would pick: a new version that
    # failed to load never costs the old one its place.
    keep = spec.policy.select(set(model.served) & set(files))
    for version in sorted(set(model.served) - keep):
        servable = model.served.pop(version)
        model.states[version] = ("UNLOADING", "OK", "")
        if servable.batcher is not None:
            await servable.batcher.close()  # finishes the requests it holds
        model.states[version] = ("END", "OK", "")
        logger.info("model %r version %d is unloaded", spec.name, version)


def _versions_text(versions) -> str:
    versions = sorted(versions)
    if not versions:
        return "no version yet"
    return ("version " if len(versions) == 1 else "versions ") + ", ".join(map(str, versions))


def find_model(models: dict[str, Model], name: str) -> Model:
    """The model called ``name``.

    Raises:
      RequestError: (404) no such model, naming those served.
    """
    if name not in models:
        served = ", ".join(repr(n) for n in sorted(models))
        raise RequestError(404, f"model {name!r} is not served here; this server serves "
                                f"{served}")
    return models[name]


def find_version(model: Model, version: str | None, label: str | None) -> int | None:
    """The version number a request asks for (None: the latest served).

    Raises:
      RequestError: (404) an unknown label, or a version that is not a number.
    """
    name = model.spec.name
    if label is not None:
        if label not in model.spec.labels:
            known = ", ".join(f"{k} -> {v}" for k, v in sorted(model.spec.labels.items()))
            raise RequestError(404, f"model {name!r} has no label {label!r}"
                                    + (f"; its labels: {known}" if known else ""))
        return model.spec.labels[label]
    if version is None:
        return None
    if not _VERSION_FOLDER.fullmatch(version):
        raise RequestError(404, f"model {name!r} has no version {version!r}; versions are "
                                f"numbers")
    return int(version)


def resolve(models: dict[str, Model], name: str, version: str | None = None,
            label: str | None = None) -> Servable:
    """The served version a request goes to: the one named, labelled, or the latest.

    Raises:
      RequestError: (404) the model, version or label is unknown or not available.
    """
    model = find_model(models, name)
    number = find_version(model, version, label)
    served = _versions_text(model.served)
    if number is None:
        if not model.served:
            raise RequestError(404, f"model {name!r} has no version available yet")
        return model.served[max(model.served)]
    if number not in model.served:
        if label is not None:
            raise RequestError(404, f"label {label!r} of model {name!r} points to version "
                                    f"{number}, which is not available; it serves {served}")
        raise RequestError(404, f"model {name!r} has no version {version!r}; it serves {served}")
    return model.served[number]


def status_rows(model: Model, version: str | None = None,
                label: str | None = None) -> list[tuple[int, str, str, str]]:
    """``(version, state, error_code, error_message)`` of every version known, newest first,
    or of the one asked for.

    Raises:
      RequestError: (404) the version or label asked for is unknown.
    """
    number = find_version(model, version, label)
    rows = [(v, *model.states[v]) for v in sorted(model.states, reverse=True)]
    if number is None:
        if not rows:
            raise RequestError(404, f"model {model.spec.name!r} has no version yet")
        return rows
    rows = [row for row in rows if row[0] == number]
    if not rows:
        raise RequestError(404, f"model {model.spec.name!r} has no version {str(number)!r}; it "
                                f"serves {_versions_text(model.served)}")
    return rows
