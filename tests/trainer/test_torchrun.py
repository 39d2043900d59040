"""The same entry point under torchrun with 2 CPU processes (gloo), as a PyTorchJob pod runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", [None, "recipes/zero2.json"], ids=["ddp", "zero2"])
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
