"""The trainer's metrics callbacks without a training loop: the final values outlive the loop for the
grace period, progress is counted to the final step, resumed token counts are not counted twice."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import TrainerState

from r1v_job.metrics import PrometheusCallback, StepLogCallback
from tests.helpers import free_port


def _state(global_step=0, max_steps=10, tokens=0, rank0=True) -> TrainerState:
    state = TrainerState(global_step=global_step, max_steps=max_steps, is_world_process_zero=rank0)
    state.num_input_tokens_seen = tokens
    return state


def _scrape(port: int) -> dict:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples if not s.labels}


def test_finish_serves_the_final_values_for_the_grace_period_then_stops():
    port = free_port()
    callback = PrometheusCallback(port, [], addr="127.0.0.1", stop_at_step=4, grace_seconds=1.5)
    callback.on_train_begin(None, _state(max_steps=10), None)
    assert _scrape(port)["r1v_train_final_step"] == 4 and _scrape(port)["r1v_train_max_steps"] == 10
    seen = []
    finishing = threading.Thread(target=callback.finish, args=(4,))
    started = time.time()
    finishing.start()
    time.sleep(0.5)
    seen.append(_scrape(port))  # while finish() waits out the grace period
    finishing.join()
    assert time.time() - started >= 1.5
    assert seen[0]["r1v_train_global_step"] == seen[0]["r1v_train_final_step"] == 4
    assert started <= seen[0]["r1v_train_completion_timestamp_seconds"] <= time.time()
    with pytest.raises(OSError):
        _scrape(port)  # and then the port is closed


def test_other_ranks_neither_serve_nor_wait():
    port = free_port()
    callback = PrometheusCallback(port, [], addr="127.0.0.1", grace_seconds=30)
    callback.on_train_begin(None, _state(rank0=False), None)
    started = time.monotonic()
    callback.finish(3)
    assert time.monotonic() - started < 1 and callback.server is None
    with pytest.raises(OSError):
        _scrape(port)


def test_a_resumed_run_counts_only_the_tokens_it_processes():
    callback = PrometheusCallback(0, [])
    callback.on_train_begin(None, _state(global_step=5, tokens=1000), None)
    callback.on_log(None, _state(global_step=6), None, logs={"num_tokens": 1250.0})
    callback.on_log(None, _state(global_step=7), None, logs={"num_tokens": 1600.0})
    assert callback.registry.get_sample_value("r1v_train_tokens_total") == 600
    assert callback.registry.get_sample_value("r1v_train_global_step") == 5  # steps come from on_step_end


def test_the_step_line_counts_to_the_final_step_and_shows_groups_without_spread(caplog):
    callback = StepLogCallback(["accuracy_reward"], stop_at_step=4)
    callback.on_train_begin(None, _state(max_steps=100), None)
    logs = {"reward": 1.25, "rewards/accuracy_reward/mean": 0.5, "kl": 0.01, "loss": 0.1,
            "completions/mean_length": 40.0, "frac_reward_zero_std": 0.25}
    with caplog.at_level(logging.INFO, logger="r1v_job"):
        callback.on_log(SimpleNamespace(), _state(global_step=1, max_steps=100), None, logs=logs)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("step 1/4 | reward 1.250 (accuracy=0.500)")
    assert "| zero-std 25% |" in line


def test_a_populated_endpoint_passes_promtool_check_metrics():
    import shutil
    import subprocess

    from prometheus_client import generate_latest

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make tools`")
    callback = PrometheusCallback(0, ["accuracy_reward", "format_reward"], stop_at_step=2)
    callback.on_train_begin(None, _state(max_steps=4), None)
    logs = {"reward": 1.5, "reward_std": 0.5, "frac_reward_zero_std": 0.25, "kl": 0.01, "loss": 0.1, "entropy": 1.2,
            "learning_rate": 1e-6, "grad_norm": 0.3, "num_tokens": 500.0, "completions/clipped_ratio": 0.1,
            "clip_ratio/low_mean": 0.01, "clip_ratio/high_mean": 0.02, "clip_ratio/low_min": 0.0,
            "clip_ratio/high_max": 0.05, "rewards/accuracy_reward/mean": 0.5, "rewards/accuracy_reward/std": 0.5,
            "rewards/format_reward/mean": 1.0, "rewards/format_reward/std": 0.0,
            **{f"completions/{s}_length": 10.0 for s in ("mean", "min", "max")},
            **{f"completions/{s}_terminated_length": 9.0 for s in ("mean", "min", "max")}}
    callback.on_log(None, _state(global_step=1), None, logs=logs)
    exposition = generate_latest(callback.registry)
    assert b'r1v_train_function_reward{function="format_reward"} 1.0' in exposition
    assert b'r1v_train_clip_ratio{bound="high"} 0.02' in exposition
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a counter without _total is a lint error.
    bad = b"# HELP r1v_x Things.\n# TYPE r1v_x counter\nr1v_x 1\n"
    assert subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True).returncode != 0
