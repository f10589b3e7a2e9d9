"""Shared test settings: no test may reach the internet or the user's data cache."""

import pytest

from fnlearn import download


@pytest.fixture(autouse=True)
def no_public_downloads(monkeypatch, tmp_path_factory):
    """Point dataset downloads at a closed loopback port and a fresh cache folder.

    A test that downloads sets FNLEARN_DATASET_MIRROR to its own loopback server. Subprocesses
    inherit both variables.
    """
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:9/")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path_factory.mktemp("fnlearn-cache")))
