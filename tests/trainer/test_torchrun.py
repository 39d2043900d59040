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


def _torchrun(model, data, out, extra_env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    env.update(PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0",
               PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(29500 + (os.getpid() + len(str(out))) % 1000))
    # The smoke recipe's rewards (they move the tiny model's weights) plus one that adds 0 and can
    # kill both ranks mid-step, as an OOM kill or a lost node does.
    cmd = [sys.executable, "-m", "torch.distributed.run", "-m", "r1v_job",
           "--config", "recipes/smoke_cpu.yaml", "--model_name_or_path", str(model),
           "--dataset_name", str(data), "--output_dir", str(out), "--offline_bootstrap", "false",
           "--max_steps", "4", "--save_steps", "2", "--max_completion_length", "16",
           "--reward_funcs", "accuracy_reward", "format_reward", "tag_count_reward",
           "tests.trainer.kill_reward:die_at_call"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_ddp_run_killed_after_a_checkpoint_resumes_bit_for_bit(tiny_model_dir, clevr_train, tmp_path):
    import safetensors.torch
    import torch

    straight = _torchrun(tiny_model_dir, clevr_train, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
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
