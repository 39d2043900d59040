"""Fixtures for the evaluator's tests: the tiny offline Qwen2-VL, a synthetic SuperCLEVR-format split
and a fake Kubernetes API server (kmock); the real Pushgateway is tests/conftest.py's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import FakeKubernetes
from r1v_job.synthetic import write_superclevr_eval


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> Path:
    """The tiny offline Qwen2-VL of tests/conftest.py, shared with the trainer's tests."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def questions(tmp_path_factory) -> Path:
    """Six SuperCLEVR-format questions on 112-px synthetic scenes."""
    return write_superclevr_eval(tmp_path_factory.mktemp("superclevr"), n=6, size=112, seed=0)


@pytest.fixture
def copy_model(tiny_model):
    """Copies the tiny model (with its processor unless processor=False) to a folder a test may write."""
    def copy(dest: Path, processor: bool = True, step: int | None = None) -> Path:
        ignore = None if processor else shutil.ignore_patterns("processor_config.json", "preprocessor_config.json",
                                                               "tokenizer*", "chat_template*")
        shutil.copytree(tiny_model, dest, ignore=ignore)
        if step is not None:
            (dest / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        return dest
    return copy


@pytest.fixture
def fake_k8s(tmp_path):
    fake = FakeKubernetes()
    fake.kubeconfig(tmp_path / "kubeconfig", "team")
    yield fake
    fake.close()
