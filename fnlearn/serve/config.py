"""What to serve: models, their base paths, version policies and labels.

A model is served from a base path holding numbered version folders
(``BASE/1/``, ``BASE/2/``, each with one file written by ``fnlearn.export.export_model``),
or from one export file (the ``python -m fnlearn.serve MODEL`` form). Several models
come from a ``--model_config_file`` in TensorFlow Serving's text format::

    model_config_list {
      config {
        name: "mnist"
        base_path: "/models/mnist"
        model_platform: "jax"
        model_version_policy { latest { num_versions: 2 } }
        version_labels { key: "stable" value: 1 }
      }
    }

read with TF Serving's own message (``tensorflow_serving.config.model_server_config_pb2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the version folders found are served (TF Serving's ``model_version_policy``).

    Attributes:
      kind: ``"latest"`` (the ``num_versions`` highest), ``"all"`` or ``"specific"``.
      num_versions: how many of the latest versions, for ``"latest"``.
      versions: the version numbers, for ``"specific"``.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"version policy must be latest, all or specific, got {self.kind!r}")
        if self.kind == "latest" and not (isinstance(self.num_versions, int)
                                          and self.num_versions > 0):
            raise ValueError(f"latest policy: num_versions must be a positive int, got "
                             f"{self.num_versions!r}")
        if self.kind == "specific" and (not self.versions or any(
                not isinstance(v, int) or v < 0 for v in self.versions)):
            raise ValueError(f"specific policy: give one or more version numbers >= 0, got "
                             f"{list(self.versions)}")

    def select(self, versions) -> set[int]:
        """The versions to serve among ``versions`` (the complete folders found)."""
        found = sorted(set(versions))
        if self.kind == "latest":
            return set(found[-self.num_versions:])
        if self.kind == "all":
            return set(found)
        return set(found) & set(self.versions)

    def describe(self) -> str:
        """The policy in the ``--model_version_policy`` form."""
        if self.kind == "latest":
            return "latest" if self.num_versions == 1 else f"latest:{self.num_versions}"
        if self.kind == "all":
            return "all"
        return "specific:" + ",".join(map(str, self.versions))


def parse_policy(text: str) -> VersionPolicy:
    """``latest``, ``latest:N``, ``all`` or ``specific:1,2`` as a ``VersionPolicy``.

    Raises:
      ValueError: another form, naming the ones accepted.
    """
    kind, _, numbers = text.partition(":")
    try:
        if kind == "latest":
            return VersionPolicy("latest", int(numbers) if numbers else 1)
        if kind == "all" and not numbers:
            return VersionPolicy("all")
        if kind == "specific" and numbers:
            return VersionPolicy("specific", versions=tuple(int(v) for v in numbers.split(",")))
    except ValueError as error:
        raise ValueError(f"bad --model_version_policy {text!r}: {error}") from None
    raise ValueError(f"bad --model_version_policy {text!r}: use latest, latest:N, all or "
                     f"specific:V1,V2")


def parse_labels(text: str | None) -> dict[str, int]:
    """``stable=1,canary=2`` as ``{"stable": 1, "canary": 2}`` (None or "": no labels).

    Raises:
      ValueError: a pair is not LABEL=VERSION.
    """
    labels = {}
    for pair in filter(None, (text or "").split(",")):
        label, _, version = pair.partition("=")
        if not _NAME.fullmatch(label) or not version.isdigit():
            raise ValueError(f"bad version label {pair!r}: use LABEL=VERSION, e.g. stable=1")
        labels[label] = int(version)
    return labels


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: its name in URLs and where its versions come from.

    Attributes:
      name: the model's name in ``/v1/models/NAME`` and gRPC's ``model_spec.name``.
      base_path: the folder of numbered version folders (None when ``file`` is given).
      policy: which versions to serve.
      labels: version labels, e.g. ``{"stable": 1}``.
      file: one export file served as version ``version``, never reloaded.
      version: the version number of ``file``.
      platform: the config's ``model_platform``, shown in the log only.
    """

    name: str
    base_path: Path | None = None
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)
    file: Path | None = None
    version: int = 1
    platform: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"model name must be letters, digits, '_', '.' or '-', got "
                             f"{self.name!r}")
        if (self.base_path is None) == (self.file is None):
            raise ValueError(f"model {self.name!r}: give a base path or a file, not both")
        if not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"version must be an int >= 0, got {self.version!r}")
        for label, version in self.labels.items():
            if not _NAME.fullmatch(label) or not isinstance(version, int):
                raise ValueError(f"model {self.name!r}: bad version label {label!r} -> "
                                 f"{version!r}")


def read_model_config_file(path: str | Path) -> list[ModelSpec]:
    """The models of a TF Serving ``--model_config_file`` (text format ``ModelServerConfig``).

    Relative base paths are taken from the current directory, as TF Serving does.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the text does not parse, or a model is named twice or has no base path.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = Path(path).read_text()
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a TF Serving model config: {error}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: expected model_config_list {{ config {{ ... }} }}")
    specs = []
    for entry in config.model_config_list.config:
        if not entry.base_path:
            raise ValueError(f"{path}: model {entry.name!r} has no base_path")
        choice = entry.model_version_policy.WhichOneof("policy_choice")
        if choice == "specific":
            policy = VersionPolicy("specific",
                                   versions=tuple(entry.model_version_policy.specific.versions))
        elif choice == "all":
            policy = VersionPolicy("all")
        else:  # TF Serving's default: the latest version
            policy = VersionPolicy("latest",
                                   entry.model_version_policy.latest.num_versions or 1)
        try:
            specs.append(ModelSpec(entry.name, Path(entry.base_path), policy,
                                   dict(entry.version_labels), platform=entry.model_platform))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    names = [spec.name for spec in specs]
    if not names:
        raise ValueError(f"{path}: the config lists no model")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a model is named twice: {names}")
    return specs
