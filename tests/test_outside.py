"""tests/outside.py: a fixture from outside the repository is read from ../shared, else fetched once
from its pinned public source into the git-ignored cache, else its tests skip saying what is missing."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from tests import outside
from tests.helpers import free_port


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty ../shared and cache, and a fixture served by a local HTTP server."""
    shared, cache, served = tmp_path / "shared", tmp_path / "cache", tmp_path / "served"
    for d in (shared, cache, served):
        d.mkdir()
    (served / "crd.yaml").write_text("kind: CustomResourceDefinition\n")
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(outside, "SHARED", shared)
    monkeypatch.setattr(outside, "CACHE", cache)
    monkeypatch.setitem(outside.FIXTURES, "test-crd", outside.Fixture("crds/test.yaml", f"http://127.0.0.1:{port}/crd.yaml"))
    monkeypatch.setitem(outside.FIXTURES, "gone", outside.Fixture("crds/gone.yaml", f"http://127.0.0.1:{port}/gone.yaml"))
    monkeypatch.delenv("R1V_NO_FETCH", raising=False)
    outside.locate.cache_clear()
    yield shared, cache, server
    server.shutdown()
    outside.locate.cache_clear()


def test_shared_copy_wins(places):
    shared, cache, _ = places
    (shared / "crds").mkdir()
    (shared / "crds" / "test.yaml").write_text("from shared")
    assert outside.require("test-crd").read_text() == "from shared"
    assert not (cache / "crds" / "test.yaml").exists()


def test_fetched_once_into_the_cache(places):
    _, cache, server = places
    path = outside.require("test-crd")
    assert path == cache / "crds" / "test.yaml" and path.read_text() == "kind: CustomResourceDefinition\n"
    server.shutdown()  # the next session reads the cache, no network needed
    outside.locate.cache_clear()
    assert outside.require("test-crd") == path


def test_missing_everywhere_skips_naming_the_file_the_source_and_why(places):
    with pytest.raises(pytest.skip.Exception) as skip:
        outside.require("gone")
    reason = str(skip.value)
    assert "crds/gone.yaml" in reason and "gone.yaml (from http://127.0.0.1:" in reason and "404" in reason


def test_fetching_can_be_turned_off(places, monkeypatch):
    monkeypatch.setenv("R1V_NO_FETCH", "1")
    path, why = outside.locate("test-crd")
    assert path is None and "R1V_NO_FETCH=1" in why


def test_every_public_source_is_pinned_by_tag_or_commit():
    for key, fixture in outside.FIXTURES.items():
        assert any(pin in fixture.url for pin in ("/v1.9.0/", "/v0.93.1/", "/v2.3.0/", "/bbbbe3d/")), key
