"""Live training metrics: Prometheus /metrics from rank 0, and one readable log line per step.

Values come from what TRL's GRPOTrainer logs (`on_log`), so Prometheus, `kubectl logs` and TRL's
own loggers always agree. Names, units and TRL keys are listed in docs/metrics.md.

The series carry no `namespace`, `run` or `pod` label of their own: Prometheus adds them to every
series of the target (the chart's ServiceMonitor/PodMonitor: the operator's `namespace` and `pod`
target labels, and a `run` relabelling), and a label exported here would clash with them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from transformers import TrainerCallback

from .config import step_batch
from .restarts import last_step

logger = logging.getLogger("r1v_job")  # the program's own lines read "r1v_job: ..."; its modules use __name__

# Step times range from ~1 s (tiny model, one GPU) to minutes (7B, long completions).
_STEP_BUCKETS = (0.5, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)

# Unlabelled gauges set from one TRL 1.16 log key each (trl/trainer/grpo_trainer.py): name -> (help, key).
# A key TRL does not log for the recipe (kl with beta 0, clip ratios with loss_type cispo) leaves its gauge at 0.
LOGGED: dict[str, tuple[str, str]] = {
    "r1v_train_reward": ("Mean total reward of the step's rollouts (the weighted sum of the reward functions)",
                         "reward"),
    "r1v_train_reward_std": ("Standard deviation of the total reward over the step's rollouts", "reward_std"),
    "r1v_train_reward_zero_std_ratio": ("Share of the step's prompt groups whose rollouts all got the same "
                                        "reward: zero advantage, no learning signal", "frac_reward_zero_std"),
    "r1v_train_kl": ("Mean per-token KL divergence to the reference model (logged when beta > 0)", "kl"),
    "r1v_train_loss": ("GRPO loss of the last logged step", "loss"),
    "r1v_train_entropy_nats": ("Mean per-token entropy of the policy over completion tokens", "entropy"),
    "r1v_train_learning_rate": ("Learning rate", "learning_rate"),
    "r1v_train_grad_norm": ("Gradient norm before clipping", "grad_norm"),
    "r1v_train_completion_length_mean_tokens": ("Mean completion length", "completions/mean_length"),
    "r1v_train_completion_length_min_tokens": ("Shortest completion of the step", "completions/min_length"),
    "r1v_train_completion_length_max_tokens": ("Longest completion of the step", "completions/max_length"),
    "r1v_train_terminated_completion_length_mean_tokens": ("Mean length of the completions that ended with EOS",
                                                           "completions/mean_terminated_length"),
    "r1v_train_terminated_completion_length_min_tokens": ("Shortest completion that ended with EOS",
                                                          "completions/min_terminated_length"),
    "r1v_train_terminated_completion_length_max_tokens": ("Longest completion that ended with EOS",
                                                          "completions/max_terminated_length"),
    "r1v_train_completion_truncated_ratio": ("Share of completions cut off at max_completion_length (no EOS)",
                                             "completions/clipped_ratio"),
    "r1v_train_clip_ratio_low_min": ("Smallest per-sequence share of tokens clipped at 1 - epsilon",
                                     "clip_ratio/low_min"),
    "r1v_train_clip_ratio_high_max": ("Largest per-sequence share of tokens clipped at 1 + epsilon_high",
                                      "clip_ratio/high_max"),
}
# The two clipping bounds never clip the same token (low needs a negative advantage, high a positive
# one), so sum by (bound) is TRL's clip_ratio/region_mean.
CLIP_BOUNDS = ("low", "high")


class TrainMetrics:
    """Every r1v_train_* family, registered in one registry. Labels are summable: the total reward
    is its own family, not a `reward="total"` beside the per-function values."""

    def __init__(self, registry: CollectorRegistry):
        self.logged = {name: Gauge(name, help_, registry=registry) for name, (help_, _) in LOGGED.items()}
        self.function_reward = Gauge("r1v_train_function_reward", "Mean reward of one reward function over the "
                                     "step's rollouts (unweighted; with weights 1 they sum to r1v_train_reward)",
                                     ["function"], registry=registry)
        self.function_reward_std = Gauge("r1v_train_function_reward_std", "Standard deviation of one reward "
                                         "function over the step's rollouts", ["function"], registry=registry)
        self.clip_ratio = Gauge("r1v_train_clip_ratio", "Share of completion tokens whose probability ratio was "
                                "clipped at this bound; the bounds are disjoint, their sum is the clipped share",
                                ["bound"], registry=registry)
        self.tokens = Counter("r1v_train_tokens", "Prompt and completion tokens processed (TRL's num_tokens)",
                              registry=registry)
        self.global_step = Gauge("r1v_train_global_step", "Optimizer steps done", registry=registry)
        self.max_steps = Gauge("r1v_train_max_steps", "Optimizer steps of the learning-rate schedule (max_steps)",
                               registry=registry)
        self.final_step = Gauge("r1v_train_final_step", "Optimizer step the run ends at (stop_at_step, else "
                                "max_steps): progress is global_step / final_step", registry=registry)
        self.last_progress = Gauge("r1v_train_last_progress_timestamp_seconds", "Unix time of the last optimizer "
                                   "step (or of the start of training, before the first)", registry=registry)
        self.completion = Gauge("r1v_train_completion_timestamp_seconds", "Unix time the final model and the "
                                "completion marker were written; 0 until then", registry=registry)
        self.step_duration = Histogram("r1v_train_step_duration_seconds", "Wall time of one optimizer step, "
                                       "generation included", buckets=_STEP_BUCKETS, registry=registry)
        self.prompts = Counter("r1v_train_prompts", "Prompts trained on", registry=registry)
        self.rollouts = Counter("r1v_train_rollouts", "Completions generated and trained on", registry=registry)
        self.gpu_allocated = Gauge("r1v_train_gpu_memory_allocated_bytes", "GPU memory held by tensors",
                                   ["device"], registry=registry)
        self.gpu_peak = Gauge("r1v_train_gpu_memory_peak_bytes", "Peak GPU memory held by tensors since start",
                              ["device"], registry=registry)
        self.source = Info("r1v_train_source", "What the run trains on: the model and data set paths and the Hub "
                           "revisions (commits) data preparation fetched them at; \"unknown\" where no record",
                           registry=registry)


# The /metrics endpoint: Prometheus scrapes one connection at a time, so a handful of slots is plenty;
# anything beyond them (a port scan, a stuck client) is closed at once instead of holding a thread.
MAX_CONNECTIONS = 4
# Seconds a connection may take to send its request and read the answer before it is closed.
CONNECTION_TIMEOUT = 10.0


class _MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics (any query string) answers the registry's exposition; every other path is 404."""

    registry: CollectorRegistry
    timeout = CONNECTION_TIMEOUT  # StreamRequestHandler puts it on the socket: a half-open client times out

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        body = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # one line per scrape would drown the step lines
        pass


class MetricsServer(HTTPServer):
    """HTTP server for /metrics with at most `max_connections` connections served at once, each on its
    own daemon thread and closed after `timeout` seconds of silence; a connection beyond the bound is
    closed unanswered. (prometheus_client's start_http_server starts a thread per connection, unbounded.)"""

    # Connections waiting to be accepted (and then served or closed at once); http.server's 5 would
    # make a burst of clients wait on the kernel's SYN retries.
    request_queue_size = 128

    def __init__(self, addr: str, port: int, registry: CollectorRegistry, max_connections: int = MAX_CONNECTIONS,
                 timeout: float = CONNECTION_TIMEOUT):
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        handler = type("Handler", (_MetricsHandler,), {"registry": registry, "timeout": timeout})
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__((addr, port), handler)
        self._thread = threading.Thread(target=self.serve_forever, name="r1v-metrics", daemon=True)
        self._thread.start()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True).start()

    def _serve_one(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # a client gone mid-answer: nothing to do but close
            pass
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def new_registry() -> CollectorRegistry:
    """A registry holding every trainer metric family (the chart's dashboard test enumerates it)."""
    registry = CollectorRegistry()
    TrainMetrics(registry)
    return registry


class PrometheusCallback(TrainerCallback):
    """Serves /metrics from the rank-0 process and updates it from each log and step.

    The endpoint outlives the training loop: `finish` (called by `r1v_job.grpo.run` once the final
    model and the completion marker are written) publishes the completion time and keeps serving for
    `grace_seconds`, so the last scrape shows the final step (progress 1.0) and the last step's values.
    """

    def __init__(self, port: int, reward_names: list[str], addr: str = "0.0.0.0", stop_at_step: int | None = None,
                 grace_seconds: float = 0.0, source: dict[str, str] | None = None):
        self.port, self.addr, self.reward_names = port, addr, reward_names
        self.stop_at_step, self.grace_seconds = stop_at_step, grace_seconds
        self.registry = CollectorRegistry()
        self.metrics = TrainMetrics(self.registry)
        if source:
            self.metrics.source.info({k: str(v) for k, v in source.items()})
        self.server = None
        self._last_step_end = None
        self._tokens_seen = 0
        self._active = False

    def on_train_begin(self, args, state, control, **kwargs):
        # Only rank 0 serves: every rank logs the same (already all-reduced) values.
        self._active = state.is_world_process_zero
        if not self._active:
            return
        m = self.metrics
        m.max_steps.set(state.max_steps)
        m.final_step.set(last_step(state.max_steps, self.stop_at_step))
        m.global_step.set(state.global_step)
        m.last_progress.set(time.time())
        # A resumed run restores TRL's token count: only what this process adds is counted.
        self._tokens_seen = state.num_input_tokens_seen or 0
        if self.port and self.server is None:
            self.server = MetricsServer(self.addr, self.port, self.registry)
            self.port = self.server.server_port  # port 0 binds an ephemeral port: report the real one
            logger.info("serving Prometheus metrics on %s:%d/metrics", self.addr, self.port)
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
        self.metrics.last_progress.set(time.time())
        if torch.cuda.is_available():
            device = torch.cuda.current_device()
            self.metrics.gpu_allocated.labels(str(device)).set(torch.cuda.memory_allocated(device))
            self.metrics.gpu_peak.labels(str(device)).set(torch.cuda.max_memory_allocated(device))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._active or not logs:
            return
        m = self.metrics
        for name, (_, key) in LOGGED.items():
            if logs.get(key) is not None:
                m.logged[name].set(logs[key])
        for name in self.reward_names:
            if logs.get(f"rewards/{name}/mean") is not None:
                m.function_reward.labels(name).set(logs[f"rewards/{name}/mean"])
            if logs.get(f"rewards/{name}/std") is not None:
                m.function_reward_std.labels(name).set(logs[f"rewards/{name}/std"])
        for bound in CLIP_BOUNDS:
            if logs.get(f"clip_ratio/{bound}_mean") is not None:
                m.clip_ratio.labels(bound).set(logs[f"clip_ratio/{bound}_mean"])
        if logs.get("num_tokens") is not None and logs["num_tokens"] > self._tokens_seen:
            m.tokens.inc(logs["num_tokens"] - self._tokens_seen)
            self._tokens_seen = logs["num_tokens"]

    def finish(self, global_step: int) -> None:
        """The run is complete (final model and marker written): publish it, serve the final values for
        `grace_seconds` (at least two scrape intervals lands them in Prometheus), then stop serving."""
        if not self._active:
            return
        self.metrics.global_step.set(global_step)
        self.metrics.completion.set(time.time())
        if self.server is None:
            return
        if self.grace_seconds > 0:
            logger.info("serving the final metrics for %.0f s more (metrics_grace_seconds)", self.grace_seconds)
            time.sleep(self.grace_seconds)
        self.server.stop()
        self.server = None


class StepLogCallback(TrainerCallback):
    """One line per logged step for `kubectl logs`: step/final step, rewards, KL, zero-spread groups, s/step, ETA."""

    def __init__(self, reward_names: list[str], stop_at_step: int | None = None):
        self.reward_names, self.stop_at_step = reward_names, stop_at_step
        self._start_time = self._start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_time, self._start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        final = last_step(state.max_steps, self.stop_at_step)
        done = state.global_step - self._start_step
        per_step = (time.perf_counter() - self._start_time) / max(done, 1)
        eta = timedelta(seconds=round(per_step * max(final - state.global_step, 0)))
        rewards = " ".join(f"{name.removesuffix('_reward')}={logs.get(f'rewards/{name}/mean', float('nan')):.3f}"
                           for name in self.reward_names)
        nan = float("nan")
        zero_std = logs.get("frac_reward_zero_std")
        logger.info("step %d/%d | reward %.3f (%s) | kl %.4g | loss %.4g | len %.0f | zero-std %.0f%% | "
                    "%.2f s/step | ETA %s", state.global_step, final, logs["reward"], rewards, logs.get("kl", nan),
                    logs.get("loss", nan), logs.get("completions/mean_length", nan),
                    nan if zero_std is None else 100 * zero_std, per_step, eta)


def training_callbacks(script_args, reward_names: list[str], source: dict[str, str] | None = None
                       ) -> list[TrainerCallback]:
    """The trainer's metrics callbacks for the recipe's script fields; `reward_names` are the reward
    functions' `__name__`s, the keys TRL logs them under (an import path's function name); `source`
    the model and data revisions (r1v_common.checkpoints.source_revisions) for r1v_train_source_info."""
    return [PrometheusCallback(script_args.metrics_port, reward_names, addr=script_args.metrics_addr,
                               stop_at_step=script_args.stop_at_step,
                               grace_seconds=script_args.metrics_grace_seconds, source=source),
            StepLogCallback(reward_names, stop_at_step=script_args.stop_at_step)]


def finish_training_metrics(trainer) -> None:
    """After the final model and the completion marker: see PrometheusCallback.finish."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, PrometheusCallback):
            callback.finish(trainer.state.global_step)
