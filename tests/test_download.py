"""Downloads against real HTTP servers on loopback: fresh, cached, corrupt, cut off, absent."""

import gzip
import hashlib
import http.server
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from fnlearn import data
from fnlearn.data import download

GZ_NAMES = [f"{name}.gz" for name in data.FILE_NAMES.values()]


class Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and counts the requests; quiet."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


class CutOff(Files):
    """Announces the whole file, sends half of it, and closes the connection."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


def serve(folder: Path, handler=Files):
    """Start a threaded HTTP server for folder on 127.0.0.1; return (server, base URL)."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(folder))
    )
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture
def server_for(monkeypatch):
    """``server_for(folder, handler)``: a loopback server set as the mirror, stopped afterwards."""
    started = []

    def start(folder: Path, handler=Files):
        server, url = serve(folder, handler)
        started.append(server)
        monkeypatch.setenv(download.MIRROR_ENV, url)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def files_in(folder: Path) -> list[str]:
    """Every file under folder, hidden temporary ones included."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def write_random_idx(folder: Path) -> Path:
    """Four small, structurally valid but unofficial IDX .gz files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in GZ_NAMES:
        array = rng.integers(0, 10, (3, 28, 28) if "images" in name else (3,), dtype=np.uint8)
        magic = 2051 if "images" in name else 2049
        header = np.array([magic, *array.shape], ">u4").tobytes()
        (folder / name).write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def test_fresh_download_then_the_cache(server_for, tmp_path, monkeypatch, full_mnist):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # no prepared tfds copy
    server = server_for(full_mnist)
    cache = tmp_path / "cache"
    dataset = data.load_mnist(cache_dir=cache)
    assert dataset.source == "download"
    assert dataset.train.images.shape == (60000, 28, 28)
    assert dataset.train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert sorted(server.requests) == sorted(f"/{name}" for name in GZ_NAMES)
    assert files_in(cache) == sorted(GZ_NAMES)
    for name in GZ_NAMES:
        assert (cache / "mnist" / name).read_bytes() == (full_mnist / name).read_bytes()

    again = data.load_mnist(cache_dir=cache)
    assert len(server.requests) == 4  # read from the cache, not downloaded again
    np.testing.assert_array_equal(again.test.images, dataset.test.images)


def test_only_the_missing_files_are_downloaded(server_for, tmp_path, monkeypatch, full_mnist):
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    for name in GZ_NAMES[:3]:
        shutil.copy(full_mnist / name, cache / "mnist" / name)
    server = server_for(full_mnist)
    assert data.load_mnist("download", cache_dir=cache).source == "download"
    assert server.requests == [f"/{GZ_NAMES[3]}"]


def test_a_corrupt_file_is_a_clear_error_and_nothing_is_cached(server_for, tmp_path):
    server = server_for(write_random_idx(tmp_path / "served"))
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="sha256 is not the official MNIST") as error:
        data.load_mnist("download", cache_dir=cache)
    assert server.requests == ["/train-images-idx3-ubyte.gz"]
    assert "train-images-idx3-ubyte.gz" in str(error.value)
    assert "nothing was cached" in str(error.value)
    assert files_in(cache) == []


def test_a_mirror_serving_a_recompressed_fashion_mnist_is_accepted(server_for, tmp_path,
                                                                    full_fashion_mnist):
    # Debian's copies differ from the official archives in their gzip headers only.
    server = server_for(full_fashion_mnist)
    dataset = data.load_fashion_mnist("download", cache_dir=tmp_path / "cache")
    assert dataset.source == "download" and dataset.train.images.shape == (60000, 28, 28)
    assert sorted(server.requests) == sorted(f"/{name}" for name in GZ_NAMES)


def test_verify_false_reaches_the_mirror_route(server_for, tmp_path):
    server_for(write_random_idx(tmp_path / "served"))
    cache = tmp_path / "cache"
    # Before: refused even with verify=False ("...; nothing was cached").
    with pytest.raises(data.DataError, match=r"its contents differ from the official files; "
                                             r"nothing was cached. Pass verify=False to load it "
                                             r"anyway"):
        data.load_fashion_mnist("download", cache_dir=cache)
    dataset = data.load_fashion_mnist("download", cache_dir=cache, verify=False)
    assert dataset.train.images.shape == (3, 28, 28)
    assert files_in(cache) == sorted(GZ_NAMES)


def test_auto_does_not_hide_a_corrupt_download_behind_the_sample(server_for, tmp_path,
                                                                  monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    server_for(write_random_idx(tmp_path / "served"))
    with pytest.raises(data.DataError, match="sha256"):
        data.load_fashion_mnist(cache_dir=tmp_path / "cache")


def test_a_connection_closed_mid_file_leaves_nothing_behind(server_for, tmp_path):
    server = server_for(write_random_idx(tmp_path / "served"), CutOff)
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="connection closed after"):
        data.load_mnist("download", cache_dir=cache)
    assert server.requests == ["/train-images-idx3-ubyte.gz"]
    assert files_in(cache) == []


def test_no_server_falls_back_to_the_sample_quickly(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    # conftest.py points the mirror at a closed loopback port.
    start = time.perf_counter()
    dataset = data.load_mnist(cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 2
    assert dataset.source == "sample" and len(dataset.train.labels) == 6000
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1
    assert "no download mirror reachable (127.0.0.1)" in notice
    assert download.MIRROR_ENV in notice
    assert files_in(tmp_path / "cache") == []
    with pytest.raises(data.DataError, match="MNIST: no download mirror reachable"):
        data.load_mnist("download", cache_dir=tmp_path / "cache")


def test_fetch_tries_the_next_mirror_after_a_missing_or_rejected_file(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "a.bin").write_bytes(b"right")
    (bad / "a.bin").write_bytes(b"wrong")
    (good / "b.bin").write_bytes(b"right too")
    expected = {name: hashlib.sha256((good / name).read_bytes()).hexdigest()
                for name in ("a.bin", "b.bin")}

    def verify(url: str, content: bytes) -> None:
        if hashlib.sha256(content).hexdigest() != expected[url.rsplit("/", 1)[-1]]:
            raise ValueError(f"{url}: wrong content")

    servers = [serve(bad), serve(good)]
    try:
        paths = download.fetch(["a.bin", "b.bin"], [url for _, url in servers],
                               tmp_path / "cache", verify, progress=False)
    finally:
        for server, _ in servers:
            server.shutdown()
            server.server_close()
    assert [p.read_bytes() for p in paths] == [b"right", b"right too"]
    # bad served a.bin (rejected) and had no b.bin (404); good served both.
    assert servers[0][0].requests == ["/a.bin", "/b.bin"]
    assert servers[1][0].requests == ["/a.bin", "/b.bin"]
    assert files_in(tmp_path / "cache") == ["a.bin", "b.bin"]


def test_cache_folder_and_mirror_settings(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "env"))
    assert download.cache_folder(tmp_path / "arg") == tmp_path / "arg"
    assert download.cache_folder() == tmp_path / "env"
    monkeypatch.delenv(download.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_folder() == tmp_path / "xdg" / "fnlearn"
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:8000/{dataset}")
    assert download.mirrors_for("fashion_mnist", ("https://x/",)) == [
        "http://127.0.0.1:8000/fashion_mnist/"
    ]
    monkeypatch.delenv(download.MIRROR_ENV)
    assert download.mirrors_for("mnist", ("https://x/", "https://y/")) == [
        "https://x/", "https://y/"
    ]
    with pytest.raises(ValueError, match="mirror URL must be http"):
        download.fetch(["a"], ["ftp://host/"], tmp_path, lambda url, content: None)


def test_unreachable_hosts_are_given_up_within_the_timeout():
    start = time.perf_counter()
    # 192.0.2.1 is reserved for documentation (RFC 5737), so nothing answers there.
    assert download.reachable_hosts({("192.0.2.1", 443), ("192.0.2.2", 80)}, timeout=0.5) == set()
    assert time.perf_counter() - start < 1.5
