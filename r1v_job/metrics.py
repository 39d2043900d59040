"""Live training metrics: Prometheus /metrics from rank 0, and one readable log line per step.

Values come from what TRL's GRPOTrainer logs (`on_log`), so Prometheus, `kubectl logs` and TRL's
own loggers always agree. Names and units are listed in docs/metrics.md.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from transformers import TrainerCallback

from .config import step_batch

logger = logging.getLogger("r1v_job")

# Step times range from ~1 s (tiny model, one GPU) to minutes (7B, long completions).
_STEP_BUCKETS = (0.5, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class TrainMetrics:
    """Every r1v_train_* family, registered in one registry."""

    def __init__(self, registry: CollectorRegistry):
        self.reward = Gauge("r1v_train_reward", "Mean reward of the step's rollouts; reward=\"total\" is the sum "
                            "of all reward functions", ["reward"], registry=registry)
        self.reward_std = Gauge("r1v_train_reward_std", "Standard deviation of the reward over the step's rollouts",
                                ["reward"], registry=registry)
        self.kl = Gauge("r1v_train_kl", "Mean per-token KL divergence to the reference model", registry=registry)
        self.loss = Gauge("r1v_train_loss", "GRPO loss of the last logged step", registry=registry)
        self.completion_length = Gauge("r1v_train_completion_length_tokens", "Completion length in tokens",
                                       ["stat"], registry=registry)
        self.learning_rate = Gauge("r1v_train_learning_rate", "Learning rate", registry=registry)
        self.grad_norm = Gauge("r1v_train_grad_norm", "Gradient norm before clipping", registry=registry)
        self.global_step = Gauge("r1v_train_global_step", "Optimizer steps done", registry=registry)
        self.max_steps = Gauge("r1v_train_max_steps", "Optimizer steps planned", registry=registry)
        self.step_duration = Histogram("r1v_train_step_duration_seconds", "Wall time of one optimizer step, "
                                       "generation included", buckets=_STEP_BUCKETS, registry=registry)
        self.prompts = Counter("r1v_train_prompts", "Prompts trained on", registry=registry)
        self.rollouts = Counter("r1v_train_rollouts", "Completions generated and trained on", registry=registry)
        self.gpu_allocated = Gauge("r1v_train_gpu_memory_allocated_bytes", "GPU memory held by tensors",
                                   ["device"], registry=registry)
        self.gpu_peak = Gauge("r1v_train_gpu_memory_peak_bytes", "Peak GPU memory held by tensors since start",
                              ["device"], registry=registry)


def new_registry() -> CollectorRegistry:
    """A registry holding every trainer metric family (the chart's dashboard test enumerates it)."""
    registry = CollectorRegistry()
    TrainMetrics(registry)
    return registry


class PrometheusCallback(TrainerCallback):
    """Serves /metrics from the rank-0 process and updates it from each log and step."""

    def __init__(self, port: int, reward_names: list[str], addr: str = "0.0.0.0"):
        self.port, self.addr, self.reward_names = port, addr, reward_names
        self.registry = CollectorRegistry()
        self.metrics = TrainMetrics(self.registry)
        self.server = None
        self._last_step_end = None
        self._active = False

    def on_train_begin(self, args, state, control, **kwargs):
        # Only rank 0 serves: every rank logs the same (already all-reduced) values.
        self._active = state.is_world_process_zero
        if not self._active:
            return
        self.metrics.max_steps.set(state.max_steps)
        self.metrics.global_step.set(state.global_step)
        if self.port and self.server is None:
            self.server, _ = start_http_server(self.port, addr=self.addr, registry=self.registry)
            self.port = self.server.server_port  # port 0 binds an ephemeral port: report the real one
            logger.info("serving Prometheus metrics on :%d/metrics", self.port)
        self._last_step_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if not self._active:
            return
        now = time.perf_counter()
        self.metrics.step_duration.observe(now - self._last_step_end)
        self._last_step_end = now
        prompts, rollouts = step_batch(args, args.world_size)
        self.metrics.rollouts.inc(rollouts)
        self.metrics.prompts.inc(prompts)
        self.metrics.global_step.set(state.global_step)
        if torch.cuda.is_available():
            device = torch.cuda.current_device()
            self.metrics.gpu_allocated.labels(str(device)).set(torch.cuda.memory_allocated(device))
            self.metrics.gpu_peak.labels(str(device)).set(torch.cuda.max_memory_allocated(device))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._active or not logs:
            return
        m = self.metrics
        for key, gauge in (("kl", m.kl), ("loss", m.loss), ("learning_rate", m.learning_rate),
                           ("grad_norm", m.grad_norm)):
            if logs.get(key) is not None:
                gauge.set(logs[key])
        if logs.get("reward") is not None:
            m.reward.labels("total").set(logs["reward"])
        if logs.get("reward_std") is not None:
            m.reward_std.labels("total").set(logs["reward_std"])
        for name in self.reward_names:
            if logs.get(f"rewards/{name}/mean") is not None:
                m.reward.labels(name).set(logs[f"rewards/{name}/mean"])
            if logs.get(f"rewards/{name}/std") is not None:
                m.reward_std.labels(name).set(logs[f"rewards/{name}/std"])
        for stat in ("mean", "min", "max"):
            if logs.get(f"completions/{stat}_length") is not None:
                m.completion_length.labels(stat).set(logs[f"completions/{stat}_length"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class StepLogCallback(TrainerCallback):
    """One line per logged step for `kubectl logs`: step/total, rewards, KL, s/step, ETA."""

    def __init__(self, reward_names: list[str]):
        self.reward_names = reward_names
        self._start_time = self._start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_time, self._start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        done = state.global_step - self._start_step
        per_step = (time.perf_counter() - self._start_time) / max(done, 1)
        eta = timedelta(seconds=round(per_step * (state.max_steps - state.global_step)))
        rewards = " ".join(f"{name.removesuffix('_reward')}={logs.get(f'rewards/{name}/mean', float('nan')):.3f}"
                           for name in self.reward_names)
        logger.info("step %d/%d | reward %.3f (%s) | kl %.4g | loss %.4g | len %.0f | %.2f s/step | ETA %s",
                    state.global_step, state.max_steps, logs["reward"], rewards, logs.get("kl", float("nan")),
                    logs.get("loss", float("nan")), logs.get("completions/mean_length", float("nan")),
                    per_step, eta)
