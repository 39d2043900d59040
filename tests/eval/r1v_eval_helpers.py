"""Helpers for the evaluator's tests: a real Pushgateway process and kmock's fake Kubernetes API server.
(A uniquely named module rather than conftest.py, so test files can import it unambiguously.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families


PUSHGATEWAY_BIN = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pushgateway:
    """A real Pushgateway on a loopback port, without persistence."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Pushgateway":
        if not Path(PUSHGATEWAY_BIN).exists():
            pytest.fail("prometheus-pushgateway is not installed: run `make tools`")
        with open(self.log, "ab") as log:
            # Debian's build defaults --persistence.file to /var/lib/prometheus/pushgateway.data: every
            # test gateway would start with the groups earlier runs left there. Empty = memory only.
            self.proc = subprocess.Popen([PUSHGATEWAY_BIN, f"--web.listen-address=127.0.0.1:{self.port}",
                                          "--persistence.file="],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"pushgateway exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"pushgateway on {self.url} not ready: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def samples(self, name: str, **labels: str) -> list:
        """Samples of `name` on the gateway's /metrics whose labels include `labels`."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return [s for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == name and labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert len(found) == 1, f"expected one {name}{labels} on the gateway, found {found}"
        return found[0].value


class FakeKubernetes:
    """kmock's KubernetesEmulator (an in-memory fake of the API server, not a real one) served on a
    loopback port from a background event loop, so the synchronous kubernetes client can talk to it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")

    async def _serve(self):
        import kmock

        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def requests(self, spec: str) -> int:
        """How many requests matching a kmock filter like 'get /path' the fake has served."""
        return len(self.handler[spec])

    def close(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """Writes a kubeconfig pointing at the fake (plain HTTP, no credentials)."""
        self.kubeconfig_path = path
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
        return path
