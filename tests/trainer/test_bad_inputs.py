"""Bad input stops before any model loads, with one line naming the key, value, file or port, and
exit code 2; nothing is written to output_dir."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from r1v_job.grpo import main
from tests.helpers import tmpfs

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "smoke_cpu.yaml"


def _recipe(tmp_path, old, new):
    path = tmp_path / "recipe.yaml"
    text = SMOKE.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return str(path)


def _file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    return str(tmp_path / name)


# (id, how to build the command line from the good one, the one line expected)
CASES = [
    ("negative max_steps", lambda a, t: a + ["--max_steps", "-5"],
     r"max_steps -5: must be a positive number of optimizer steps, or -1"),
    ("zero max_steps", lambda a, t: a + ["--max_steps", "0"], r"max_steps 0: must be a positive"),
    ("zero stop step", lambda a, t: a + ["--stop_at_step", "0"], r"stop_at_step 0: must be a positive"),
    ("no epochs", lambda a, t: a + ["--max_steps", "-1", "--num_train_epochs", "0"],
     r"num_train_epochs 0(\.0)?: must be positive when max_steps is -1"),
    ("empty jsonl", lambda a, t: a + ["--dataset_name", _file(t, "empty.jsonl", "")],
     r"dataset_name \S+empty.jsonl: no usable rows out of 0; the file has no rows"),
    ("only malformed lines", lambda a, t: a + ["--dataset_name", _file(t, "bad.jsonl", '{"image": \nnot json\n')],
     r"bad.jsonl: no usable rows out of 2; first reasons: \S+bad.jsonl:1: malformed JSON .*; "
     r"\S+bad.jsonl:2: malformed JSON"),
    ("wrong schema", lambda a, t: a + ["--dataset_name", _file(t, "q.jsonl", '{"image_path": "x.png"}\n')],
     r"q.jsonl: missing columns \['image', 'problem', 'solution'\]"),
    ("reward_funcs a string", lambda a, t: ["--config", _recipe(t, "reward_funcs: [accuracy_reward, format_reward, "
                                                                  "tag_count_reward]", "reward_funcs: accuracy_reward"),
                                            *a[2:]],
     r"reward_funcs 'accuracy_reward': must be a list of text \(--config \S+recipe.yaml\)"),
    # Reported before the data check: the empty data set never gets read.
    ("unknown reward", lambda a, t: a + ["--reward_funcs", "acuracy_reward",
                                         "--dataset_name", _file(t, "empty.jsonl", "")],
     r"reward_funcs: unknown \['acuracy_reward'\]; known rewards are \[.*\], or give one by import path"),
    ("reward import path", lambda a, t: a + ["--reward_funcs", "no_such_pkg.rewards:fn"],
     r"reward_funcs: 'no_such_pkg.rewards:fn': cannot import module 'no_such_pkg.rewards'"),
    ("reward import attribute", lambda a, t: a + ["--reward_funcs", "r1v_job.rewards:no_such_fn"],
     r"module 'r1v_job.rewards' has no function 'no_such_fn'"),
    ("missing config", lambda a, t: ["--config", str(t / "nope.yaml"), *a[2:]],
     r"--config \S+nope.yaml: No such file or directory"),
    ("config not YAML", lambda a, t: ["--config", _file(t, "broken.yaml", "max_steps: 2\nreward_funcs: [a\n"), *a[2:]],
     r"--config \S+broken.yaml:\d+: not valid YAML"),
    ("unknown recipe key", lambda a, t: ["--config", _recipe(t, "learning_rate:", "learning_rat:"), *a[2:]],
     r"--config \S+recipe.yaml: unknown key\(s\) \['learning_rat'\]"),
    ("unknown argument", lambda a, t: a + ["--lerning_rate", "1e-4"],
     r"unknown argument\(s\) \['--lerning_rate', '1e-4'\]"),
    ("abbreviated argument", lambda a, t: a + ["--learning_rat", "1e-4"],
     r"unknown argument\(s\) \['--learning_rat', '1e-4'\]"),
    ("bf16 weights without DeepSpeed", lambda a, t: a + ["--dtype", "bfloat16"],
     r"dtype: bfloat16 with deepspeed unset: .*set dtype: float32"),
    ("bad value", lambda a, t: a + ["--max_steps", "abc"],
     r"argument --max_steps/--max-steps: invalid int value: 'abc'"),
    ("missing dataset folder", lambda a, t: a + ["--dataset_name", "/data/datasets/clevr_cogen_a_train"],
     r"dataset_name /data/datasets/clevr_cogen_a_train: no such file or folder"),
    ("missing model folder", lambda a, t: a + ["--model_name_or_path", "/data/models/Qwen2-VL-2B-Instruct"],
     r"model_name_or_path /data/models/Qwen2-VL-2B-Instruct: no such folder"),
    ("broken resume checkpoint", lambda a, t: a + ["--resume_from_checkpoint", str(t)],
     r"resume_from_checkpoint \S+: no trainer_state.json"),
]


@pytest.fixture
def good_argv(tiny_model_dir, clevr_train, tmp_path):
    out = tmp_path / "run"
    return ["--config", str(SMOKE), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(clevr_train),
            "--output_dir", str(out), "--offline_bootstrap", "false", "--max_steps", "2", "--save_steps", "1"], out


def _assert_one_line(capsys, pattern):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("r1v_job: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("make, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(good_argv, tmp_path, capsys, make, expected):
    argv, out = good_argv
    assert main(make(argv, tmp_path)) == 2
    _assert_one_line(capsys, expected)
    assert not out.exists()  # no checkpoint, no marker, not even the folder


def test_a_metrics_port_in_use_is_named(good_argv, capsys):
    argv, out = good_argv
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(argv + ["--metrics_port", str(port)]) == 2
    _assert_one_line(capsys, rf"metrics_port {port}: in use by another process; pick another port, or 0")
    assert not out.exists()


def test_the_traceback_comes_back_under_the_debug_flag(good_argv, capsys, monkeypatch):
    argv, _ = good_argv
    assert main(argv + ["--max_steps", "-5", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UsageError: max_steps -5" in err


def test_preflight_only_checks_without_loading_a_model_or_writing(good_argv, capsys, monkeypatch):
    argv, out = good_argv
    import r1v_job.grpo as grpo

    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("preflight_only built a trainer"))
    assert main(argv + ["--preflight_only", "true"]) == 0
    assert main(argv + ["--preflight_only", "true", "--reward_funcs", "nope"]) == 2
    _assert_one_line(capsys, r"reward_funcs: unknown \['nope'\]")
    assert not out.exists()


def test_the_command_line_exits_2_with_one_line(good_argv):
    argv, out = good_argv
    result = subprocess.run([sys.executable, "-m", "r1v_job", *argv, "--max_steps", "-5"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "r1v_job: error: max_steps -5: must be a positive number of optimizer steps, or -1 to train "
        "num_train_epochs epochs")
    assert not out.exists()


def _set(tmp_path, key, value):
    """The smoke recipe with `key: value` (YAML text), replacing the recipe's own line for the key."""
    lines = [line for line in SMOKE.read_text().splitlines() if not line.startswith(f"{key}:")]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines + [f"{key}: {value}"]) + "\n")
    return str(path)


def _in_recipe(key, value):
    return lambda a, t: ["--config", _set(t, key, value), *a[2:]]


# Values a recipe file or the command line may carry that would otherwise fail after the model loads
# (and again on every restart) or end in a traceback: (id, command line, the one line expected).
RECIPE_VALUES = [
    ("temperature -1", _in_recipe("temperature", "-1"), r"^temperature -1: must be a positive number"),
    ("temperature 0 on the command line", lambda a, t: a + ["--temperature", "0"],
     r"^temperature 0.0: must be a positive"),
    ("batch size 0", _in_recipe("per_device_train_batch_size", "0"),
     r"^per_device_train_batch_size 0: must be a positive integer"),
    ("learning_rate .nan", _in_recipe("learning_rate", ".nan"), r"^learning_rate nan: must be a finite non-negative"),
    ("learning_rate -1", lambda a, t: a + ["--learning_rate", "-1"],
     r"^learning_rate -1.0: must be a finite non-negative"),
    ("max_steps 6.5", _in_recipe("max_steps", "6.5"),
     r"^max_steps 6.5: must be an integer \(--config \S+recipe.yaml\)"),
    ("max_steps null", _in_recipe("max_steps", "null"), r"^max_steps null: must be an integer \(--config"),
    ("max_completion_length -5", _in_recipe("max_completion_length", "-5"),
     r"^max_completion_length -5: must be a positive integer"),
    ("min_pixels above max_pixels", _in_recipe("min_pixels", "20000"),
     r"^min_pixels 20000: above max_pixels 12544; .*min_pixels <= max_pixels"),
    ("dataset_name 42", _in_recipe("dataset_name", "42"), r"^dataset_name 42: must be text or null \(--config"),
    ("loss_type misspelt", _in_recipe("loss_type", "gpro"), r"^loss_type 'gpro': must be one of grpo, dr_grpo, dapo"),
    ("top_p above 1", _in_recipe("top_p", "1.5"), r"^top_p 1.5: must be a number in \(0, 1\]"),
    ("seed negative", _in_recipe("seed", "-3"), r"^seed -3: must be an integer in \[0, 2\^32\)"),
    ("bf16 a number", _in_recipe("bf16", "2"), r"^bf16 2: must be true or false or null"),
    ("dtype not a choice", _in_recipe("dtype", "fp32"),
     r"^dtype 'fp32': must be one of auto, bfloat16, float16, float32"),
    ("reward_weights of another length", lambda a, t: a + ["--reward_weights", "1.0", "1.0"],
     r"^reward_weights \[1.0, 1.0\]: must be 3 finite numbers, one per reward function"),
    ("marker outside output_dir", lambda a, t: a + ["--completion_marker", "../done.json"],
     r"^completion_marker '../done.json': must be a file name inside output_dir"),
    ("marker an absolute path", lambda a, t: a + ["--completion_marker", str(t / "done.json")],
     r"^completion_marker '/\S+done.json': must be a file name inside output_dir"),
    ("marker a model file", lambda a, t: a + ["--completion_marker", "config.json"],
     r"^completion_marker 'config.json': the name of a final model file"),
    ("output_dir under a file", lambda a, t: a + ["--output_dir", _file(t, "plain.txt", "x") + "/run"],
     r"^output_dir \S+plain.txt/run: \S+plain.txt is not a folder"),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in RECIPE_VALUES], ids=[c[0] for c in RECIPE_VALUES])
def test_a_bad_recipe_value_is_one_line_exit_2_before_data_or_model(good_argv, tmp_path, capsys, monkeypatch,
                                                                   make, expected):
    import r1v_job.grpo as grpo

    monkeypatch.setattr(grpo, "load_checked_dataset", lambda *a: pytest.fail("the data set was read"))
    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("a trainer was built"))
    argv, out = good_argv
    assert main(make(argv, tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [line.removeprefix("r1v_job: error: ") for line in err.splitlines() if line.startswith("r1v_job: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs: a folder no process may write in, root included."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        yield folder


def test_a_read_only_output_dir_is_one_line_exit_2(good_argv, read_only_folder, capsys, monkeypatch):
    import r1v_job.grpo as grpo

    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("a trainer was built"))
    argv, _ = good_argv
    assert main(argv + ["--output_dir", str(read_only_folder / "run")]) == 2
    _assert_one_line(capsys, rf"output_dir {read_only_folder}/run: cannot write there \(its nearest existing folder "
                             rf"{read_only_folder}\): Read-only file system; give the job a writable folder")
    assert main(argv + ["--output_dir", str(read_only_folder), "--preflight_only", "true"]) == 2
    _assert_one_line(capsys, rf"output_dir {read_only_folder}: cannot write there: Read-only file system")
