"""The same entry point under torchrun with 2 CPU processes (gloo), as a PyTorchJob pod runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["recipes/zero2.json"], ids=["zero2"])  # DDP: the resume test below
def test_two_process_torchrun_completes(tiny_model_dir, clevr_train, tmp_path, deepspeed):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # What a PyTorchJob injects; torchrun reads PET_* itself.
    env.update(PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0",
               PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(29500 + os.getpid() % 1000))
    cmd = [sys.executable, "-m", "torch.distributed.run", "-m", "r1v_job",
           "--config", "recipes/smoke_cpu.yaml", "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", str(clevr_train), "--output_dir", str(out), "--offline_bootstrap", "false",
           "--max_steps", "2", "--save_steps", "2", "--max_completion_length", "8"]
    if deepspeed:  # the recipe's own ZeRO-2 file, through the real DeepSpeed (CPU, gloo)
        cmd += ["--deepspeed", deepspeed]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Both ranks ran: rank 1's logs are silenced, so check the world size the trainer recorded.
    assert json.loads((out / "training_complete.json").read_text())["global_step"] == 2
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert "step 2/2" in result.stderr
    assert (out / "checkpoint-2" / "rng_state_1.pth").is_file()  # rank 1 saved its RNG state
    if deepspeed:  # DeepSpeed's own sharded optimizer states, one file per rank
        assert len(list((out / "checkpoint-2" / "global_step2").glob("*optim_states.pt"))) == 2
    # Restarted as a pod would be after the run finished: nothing trained, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished at step 2" in again.stderr and "step 1/2" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def _pet_env(out, extra_env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    env.update(PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0",
               PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(29500 + (os.getpid() + len(str(out))) % 1000))
    return env


def _trainer_args(model, data, out):
    # The smoke recipe's rewards (they move the tiny model's weights) plus one that adds 0 and can
    # kill both ranks mid-step, as an OOM kill or a lost node does, or send SIGTERM mid-step.
    return ["-m", "r1v_job", "--config", "recipes/smoke_cpu.yaml", "--model_name_or_path", str(model),
            "--dataset_name", str(data), "--output_dir", str(out), "--offline_bootstrap", "false",
            "--max_steps", "4", "--save_steps", "2", "--max_completion_length", "16",
            "--reward_funcs", "accuracy_reward", "format_reward", "tag_count_reward",
            "tests.trainer.kill_reward:die_at_call"]


def _torchrun(model, data, out, extra_env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", *_trainer_args(model, data, out)]
    return subprocess.run(cmd, cwd=REPO, env=_pet_env(out, extra_env), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_straight(tiny_model_dir, clevr_train, tmp_path_factory):
    """An uninterrupted 2-process run, the reference of the restarted ones."""
    out = tmp_path_factory.mktemp("ddp") / "straight"
    straight = _torchrun(tiny_model_dir, clevr_train, out)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_process_ddp_run_killed_after_a_checkpoint_resumes_bit_for_bit(tiny_model_dir, clevr_train, tmp_path,
                                                                           ddp_straight):
    import safetensors.torch
    import torch

    (tmp_path / "straight").symlink_to(ddp_straight)
    # Both ranks die in step 3's reward, after checkpoint-2: torchrun reports the worker failure.
    killed = _torchrun(tiny_model_dir, clevr_train, tmp_path / "killed", {"R1V_TEST_DIE_AT_CALL": "3"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "killed" / "training_complete.json").exists()
    resumed = _torchrun(tiny_model_dir, clevr_train, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step 3/4" in resumed.stderr and "step 1/4" not in resumed.stderr

    a = safetensors.torch.load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "killed" / "model.safetensors"))
    base = safetensors.torch.load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(not torch.equal(a[k], base[k]) for k in base)  # the weights moved
    assert all(torch.equal(a[k], b[k]) for k in base)
    # Steps 3-4, the ones after the restart, moved the weights too: a resume that kept checkpoint-2's
    # weights without training on would not pass the equality above.
    at_2 = safetensors.torch.load_file(str(tmp_path / "straight" / "checkpoint-2" / "model.safetensors"))
    assert sum(not torch.equal(a[k], at_2[k]) for k in base) > len(base) // 2

    def losses(out):
        history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert json.loads((tmp_path / "killed" / "training_complete.json").read_text())["global_step"] == 4
    assert (tmp_path / "killed" / "checkpoint-4" / "rng_state_1.pth").is_file()  # rank 1 saved its RNG state


@pytest.mark.slow
def test_two_process_run_sigterm_mid_step_through_the_launcher_checkpoints_exits_preempted_and_resumes_bit_for_bit(
        tiny_model_dir, clevr_train, tmp_path, ddp_straight):
    """The pod's path: the launcher (PID 1 in a pod) gets SIGTERM in the middle of step 3 and
    forwards it to torchrun, which forwards it to both workers; they agree to stop after step 3,
    save it, and the pod exits 143."""
    import time

    import safetensors.torch
    import torch

    out = tmp_path / "preempted"
    pidfile = tmp_path / "launcher.pid"
    env = _pet_env(out, {"R1V_TEST_TERM_AT_CALL": "3", "R1V_TEST_TERM_PIDFILE": str(pidfile),
                         "R1V_TEST_TERM_WAIT": "3", "R1V_GRACE_SECONDS": "120", "R1V_PREFLIGHT": "0",
                         "R1V_MODEL_PATH": str(tiny_model_dir), "R1V_DATASET_PATH": str(clevr_train),
                         "R1V_CLAIM": "test",
                         "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    launcher = subprocess.Popen(["sh", str(REPO / "charts/r1v/files/launch.sh"),
                                 *_trainer_args(tiny_model_dir, clevr_train, out)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pidfile.write_text(str(launcher.pid))
    _, err = launcher.communicate(timeout=300)
    took = time.time() - float(Path(f"{pidfile}.sent").read_text())
    assert launcher.returncode == 143, err[-3000:]
    assert "preempted" in err.splitlines()[-1]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    from r1v_job import checkpoints as ckpt
    assert ckpt.checkpoint_problem(out / "checkpoint-3") is None  # both ranks' states, whole
    assert (out / "checkpoint-3" / "rng_state_1.pth").is_file()
    assert not (out / "training_complete.json").exists()
    assert took < 120  # SIGTERM to exit, the step in flight and its checkpoint: within the grace period

    resumed = _torchrun(tiny_model_dir, clevr_train, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step 4/4" in resumed.stderr and "step 3/4" not in resumed.stderr
    a = safetensors.torch.load_file(str(ddp_straight / "model.safetensors"))
    b = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
