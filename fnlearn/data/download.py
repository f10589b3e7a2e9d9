"""Download files from the first mirror that serves a verified copy, into an atomic cache.

    paths = fetch(names, mirrors, folder, verify)

Each file is streamed to a temporary name in the cache folder, checked by ``verify``, and only
then renamed to its own name, so an interrupted or corrupt download never leaves a file that
looks complete. Mirror hosts are probed first with a short, bounded timeout, so an offline
machine gives up within seconds.
"""

import http.client
import os
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

MIRROR_ENV = "FNLEARN_DATASET_MIRROR"
CACHE_ENV = "FNLEARN_DATA_CACHE"
PROBE_TIMEOUT = 2.0  # seconds for name lookup plus TCP connect, all mirror hosts together
READ_TIMEOUT = 30.0  # seconds without a byte from a server before its download is abandoned
CHUNK = 1 << 16


class DownloadError(OSError):
    """No mirror could serve a file: the machine is offline, hosts are unreachable or broke off."""


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache folder: ``cache_dir``, else $FNLEARN_DATA_CACHE, else ~/.cache/fnlearn.

    Args:
      cache_dir: an explicit folder, or None.

    Returns:
      The folder (not created here).
    """
    if cache_dir is not None:
        return Path(cache_dir)
    from_env = os.environ.get(CACHE_ENV)
    if from_env:
        return Path(from_env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fnlearn"


def mirrors_for(dataset: str, defaults: Sequence[str]) -> list[str]:
    """Return the base URLs to try: $FNLEARN_DATASET_MIRROR alone if set, else ``defaults``.

    Args:
      dataset: the dataset's name, substituted for ``{dataset}`` in the variable's value.
      defaults: the public mirrors, in order of preference.

    Returns:
      Base URLs, each ending in "/".
    """
    override = os.environ.get(MIRROR_ENV, "").strip()
    bases = [override.replace("{dataset}", dataset)] if override else list(defaults)
    return [base if base.endswith("/") else base + "/" for base in bases]


def fetch(
    names: Sequence[str],
    mirrors: Sequence[str],
    folder: str | os.PathLike,
    verify: Callable[[str, bytes], None],
    *,
    progress: bool = True,
) -> list[Path]:
    """Make sure each file is in ``folder``, downloading the missing ones from ``mirrors``.

    Files already in the folder are trusted: only verified downloads are ever renamed into it.

    Args:
      names: file names, appended to each mirror's base URL.
      mirrors: base URLs ending in "/", tried in order for each file.
      folder: the cache folder for these files; created if needed.
      verify: ``verify(url, data)`` raises ``ValueError`` if ``data`` is not the right file; such
        a file is discarded and the next mirror tried.
      progress: show a tqdm progress bar on stderr per file.

    Returns:
      The paths of the files, in the order of ``names``.

    Raises:
      ValueError: every mirror that answered served a file ``verify`` rejected (that error).
      DownloadError: no mirror could be reached or finish the download.
    """
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    folder = Path(folder)
    paths = [folder / name for name in names]
    missing = [path for path in paths if not path.is_file()]
    if not missing:
        return paths
    hosts = {base: _host_and_port(base) for base in mirrors}
    answering = reachable_hosts(set(hosts.values()), PROBE_TIMEOUT)
    usable = [base for base in mirrors if hosts[base] in answering]
    if not usable:
        names_ = ", ".join(dict.fromkeys(host for host, _ in hosts.values()))
        raise DownloadError(f"no download mirror reachable ({names_})")
    folder.mkdir(parents=True, exist_ok=True)
    for path in missing:
        _fetch_one(path, usable, verify, progress)
    return paths


def reachable_hosts(
    hosts: set[tuple[str, int]], timeout: float = PROBE_TIMEOUT
) -> set[tuple[str, int]]:
    """Return the (host, port) pairs to which a TCP connection opens within ``timeout`` seconds.

    Name lookup ignores socket timeouts and can hang for long on an offline machine, so each probe
    runs in a daemon thread, all at once, and those still running at the deadline count as
    unreachable.

    Args:
      hosts: (host, port) pairs.
      timeout: seconds for all of them together.

    Returns:
      The subset that answered.
    """
    opened: list[tuple[str, int]] = []  # a list: probes abandoned at the deadline may still append

    def probe(address: tuple[str, int]) -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(address)
        except OSError:
            pass

    threads = [threading.Thread(target=probe, args=(address,), daemon=True) for address in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return set(opened)


def _host_and_port(base: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"mirror URL must be http:// or https:// with a host, got {base!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _fetch_one(
    path: Path, mirrors: Sequence[str], verify: Callable[[str, bytes], None], progress: bool
) -> None:
    failures: list[str] = []
    rejected: ValueError | None = None
    for base in mirrors:
        url = base + path.name
        try:
            _download_verified(url, path, verify, progress)
            return
        except ValueError as error:
            rejected = rejected or error
            failures.append(f"{url}: {error}")
        except (OSError, http.client.HTTPException) as error:
            failures.append(f"{url}: {error}")
    if rejected is not None:
        raise type(rejected)(f"{rejected}; nothing was cached") from rejected
    raise DownloadError(f"could not download {path.name} ({'; '.join(failures)})")


def _download_verified(
    url: str, path: Path, verify: Callable[[str, bytes], None], progress: bool
) -> None:
    from tqdm import tqdm

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(
            url, timeout=READ_TIMEOUT
        ) as response:
            expected = response.length  # Content-Length, or None
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=path.name, disable=not progress) as bar:
                received = 0
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise DownloadError(f"connection closed after {received} of {expected} bytes")
        verify(url, Path(temporary).read_bytes())
        os.chmod(temporary, 0o644)  # mkstemp's 0o600 would hide a shared cache from other users
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
