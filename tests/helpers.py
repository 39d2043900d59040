"""Helpers shared by every test package: a free loopback port, waiting for a real server to be ready, and
kmock's fake Kubernetes API server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, log: Path, name: str, timeout: float) -> None:
    """Until `url` answers 200, or fail the test with `name`'s log: it exited, or never got ready."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{name} on {url} not ready: {log.read_text()}")


class FakeKubernetes:
    """kmock's KubernetesEmulator (an in-memory fake of the API server, not a real one: no admission,
    no operator, no scheduler, no RBAC) served on a loopback port from a background event loop, so
    the synchronous kubernetes and kubeflow-training clients can talk to it. `emulator.objects` is
    what it stores; `emulator[FILTER] << response` scripts an answer."""

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
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def requests(self, spec: str) -> int:
        """How many requests matching a kmock filter like 'get /path' the fake has served."""
        return len(self.emulator[spec])

    def configuration(self):
        """A kubernetes client Configuration pointing at the fake (plain HTTP, no credentials)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return cfg

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """Writes a kubeconfig pointing at the fake, with `namespace` as the context's default."""
        self.kubeconfig_path = path
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
        return path

    def close(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def bad_images(folder: Path) -> dict[str, object]:
    """The four images no run may stop on, written into `folder`, as an `image` field value each:
    "wide" a 1x30000 PNG (aspect ratio over Qwen2-VL's 200: smart_resize raises), "fifo" a FIFO (opening
    it for reading blocks for ever), "number" the number 42 instead of a path, "cmyk" a CMYK JPEG."""
    import os

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30000, 1), (200, 30, 30)).save(folder / "wide.png")
    os.mkfifo(folder / "fifo.png")
    Image.new("CMYK", (64, 48), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    return {"wide": "wide.png", "fifo": "fifo.png", "number": 42, "cmyk": "cmyk.jpg"}


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A real tmpfs mounted on `folder` (made here) with mount(8) `options` ("size=1m", "ro,size=1m"): a
    disk that fills, or one no process may write, root included. Skips the test where it cannot mount."""
    import pytest

    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
