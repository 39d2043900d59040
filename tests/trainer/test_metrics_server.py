"""Rank 0's /metrics endpoint: only /metrics, on the configured address, with a bound on the
connections (and so threads) it holds; and the model and data revisions a run reports."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from r1v_job import checkpoints as ckpt
from r1v_job.metrics import MetricsServer, PrometheusCallback
from r1v_job.preflight import UsageError, check_metrics_port
from tests.helpers import free_port


@pytest.fixture
def registry():
    registry = CollectorRegistry()
    Gauge("r1v_train_global_step", "Optimizer steps done", registry=registry).set(3)
    return registry


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_only_the_metrics_path_is_served(registry):
    server = MetricsServer("127.0.0.1", 0, registry)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        status, body = _get(f"{base}/metrics")
        assert status == 200 and b"r1v_train_global_step 3.0" in body
        assert _get(f"{base}/metrics?name[]=x")[0] == 200  # Prometheus may add a query string
        for path in ("/", "/metricsx", "/debug", "/metrics/../etc/passwd"):
            status, body = _get(base + path)
            assert status == 404 and b"r1v_train" not in body, path
    finally:
        server.stop()


def test_the_bind_address_is_the_only_one_answering(registry):
    port = free_port()
    server = MetricsServer("127.0.0.1", port, registry)
    try:
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 200
        with pytest.raises(OSError):  # another loopback address of the same host: nothing listens there
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        server.stop()


def _threads_held_by_half_open_connections(start, count: int) -> int:
    """Opens `count` connections that never send a request; returns how many threads they add."""
    before = threading.active_count()
    server = start()
    port = server.server_port if hasattr(server, "server_port") else server.server_address[1]
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # let the server accept them all
        return threading.active_count() - before - 1  # less the accept loop's own thread
    finally:
        for s in sockets:
            s.close()
        (server.stop if hasattr(server, "stop") else server.shutdown)()


def test_half_open_connections_hold_a_bounded_number_of_threads_and_time_out(registry):
    held = _threads_held_by_half_open_connections(lambda: MetricsServer("127.0.0.1", 0, registry, timeout=1.0), 400)
    assert held <= 4, f"400 half-open connections held {held} threads"
    # The check can fail: prometheus_client's own server starts a thread for each of them.
    unbounded = _threads_held_by_half_open_connections(
        lambda: start_http_server(0, addr="127.0.0.1", registry=registry)[0], 12)
    assert unbounded >= 10
    # A slot held by a silent client comes back after the timeout: scrapes work again.
    server = MetricsServer("127.0.0.1", 0, registry, max_connections=1, timeout=0.5)
    try:
        silent = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
        time.sleep(0.1)
        with pytest.raises(OSError):  # the one slot is taken: closed unanswered
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=2).read()
        time.sleep(0.8)
        assert _get(f"http://127.0.0.1:{server.server_port}/metrics")[0] == 200
        assert server.refused >= 1
        silent.close()
    finally:
        server.stop()


def test_an_address_the_pod_does_not_have_is_named_before_training(capsys):
    args = SimpleNamespace(metrics_port=free_port(), metrics_addr="192.0.2.1")  # TEST-NET-1: never local
    with pytest.raises(UsageError, match=r"^metrics_addr 192\.0\.2\.1: cannot bind port \d+ there"):
        check_metrics_port(args, None, None)
    check_metrics_port(SimpleNamespace(metrics_port=free_port(), metrics_addr="127.0.0.1"), None, None)


def test_the_run_reports_the_revisions_it_trains_on(tmp_path):
    model, data = tmp_path / "models" / "m", tmp_path / "datasets" / "d"
    model.mkdir(parents=True)
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("{}\n")
    (model / ckpt.SOURCE_RECORD).write_text(json.dumps({"repo_id": "org/m", "repo_type": "model",
                                                        "revision": "a" * 40}))
    source = ckpt.source_revisions(model, data / "train.jsonl", model_revision="main")
    # The model's record wins over the recipe's "main"; the data set has no record: unknown, never a guess.
    assert source == {"model": str(model), "model_revision": "a" * 40,
                      "dataset": str(data / "train.jsonl"), "dataset_revision": "unknown"}
    (data / ckpt.SOURCE_RECORD).write_text(json.dumps({"revision": "b" * 40}))
    assert ckpt.source_revisions(model, data / "train.jsonl")["dataset_revision"] == "b" * 40
    assert ckpt.source_revision("Org/hub-id-not-a-path", "v1.0") == "v1.0"

    callback = PrometheusCallback(0, [], source=source)
    assert callback.registry.get_sample_value("r1v_train_source_info", source) == 1.0

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    marker = ckpt.write_completion_marker(tmp_path / "out", ckpt.COMPLETION_MARKER, 6, source)
    assert json.loads(marker.read_text())["source"] == source
