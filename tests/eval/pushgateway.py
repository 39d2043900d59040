"""Helpers for the evaluator's tests: a real Pushgateway process (the free port and the fake
Kubernetes API server are tests/helpers.py's)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_ready


PUSHGATEWAY_BIN = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


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
        wait_ready(self.proc, f"{self.url}/-/ready", self.log, "pushgateway", timeout=20)
        return self

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
