"""Session-wide fixtures: one tiny offline Qwen2-VL, one set of synthetic scenes and one real Pushgateway
(Debian's prometheus-pushgateway on a loopback port) for all tests."""

import os

import pytest

# Tests never reach the Hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from r1v_job.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2vl")


@pytest.fixture(scope="session")
def clevr_train(tmp_path_factory):
    """A CLEVR-70k-schema jsonl of 24 synthetic scenes (112 px)."""
    from r1v_job.synthetic import write_clevr_train

    return write_clevr_train(tmp_path_factory.mktemp("scenes") / "clevr", 24, size=112, seed=0)


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory):
    from tests.eval.pushgateway import Pushgateway
    from tests.helpers import free_port

    gateway = Pushgateway(free_port(), tmp_path_factory.mktemp("pushgateway") / "log").start()
    yield gateway
    gateway.stop()
