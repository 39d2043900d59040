"""The SFT controls train on GRPO's rows: one on the dataset's own answers, one (R1-V's CoT-SFT) on
traces a teacher writes from each training scene's description."""

from __future__ import annotations

import json

import pytest

from demo.sft import control_rows, teacher_trace
from r1v_common.prompts import TRAIN_PROMPT
from r1v_job.rewards import accuracy_reward, format_reward
from r1v_job.synthetic import CLEVR_STYLE, read_jsonl, write_clevr_train


@pytest.fixture(scope="module")
def train_jsonl(tmp_path_factory):
    from dataclasses import replace

    return write_clevr_train(tmp_path_factory.mktemp("train"), 6, 112, seed=3, style=replace(CLEVR_STYLE, cell=28),
                             describe=True)


def _completions(rows):
    return [r["completion"][0]["content"] for r in rows]


def test_answers_control_fine_tunes_on_the_dataset_solution_verbatim(train_jsonl):
    rows = control_rows(train_jsonl, 3, "answers")
    solutions = [r["solution"] for r in read_jsonl(train_jsonl)]
    assert _completions(rows) == solutions[:3]
    assert rows[0]["prompt"][0]["content"] == TRAIN_PROMPT.format(Question="How many items are there in the image?")
    assert rows[1]["image"] == str(train_jsonl.parent / read_jsonl(train_jsonl)[1]["image"])


def test_cot_control_traces_name_each_scenes_objects_then_its_count(train_jsonl):
    rows = control_rows(train_jsonl, 6, "cot")
    completions = _completions(rows)
    scenes = read_jsonl(train_jsonl.parent / "scenes.jsonl")
    for completion, scene in zip(completions, scenes, strict=True):
        for obj in scene["objects"]:
            assert f"{obj['size']} {obj['colour']} {obj['shape']}" in completion
    # Every trace passes R1-V's format rule and earns the accuracy reward against its own row.
    assert format_reward(completions) == [1.0] * 6
    solutions = [r["solution"] for r in read_jsonl(train_jsonl)]
    assert accuracy_reward(completions, solution=solutions) == [1.0] * 6
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in control_rows(train_jsonl, 6, "answers")]


def test_teacher_trace_lists_objects_in_the_descriptions_order():
    objects = [{"shape": "cube", "colour": "red", "size": "small"},
               {"shape": "sphere", "colour": "blue", "size": "large"},
               {"shape": "cylinder", "colour": "gray", "size": "small"}]
    assert teacher_trace(objects) == ("<think>I see a small red cube, a large blue sphere and a small gray cylinder. "
                                      "That makes 3 objects.</think><answer>3</answer>")
    assert teacher_trace(objects[:1]) == "<think>I see a small red cube. That makes 1 object.</think><answer>1</answer>"


def test_a_description_that_disagrees_with_its_label_is_named(tmp_path, train_jsonl):
    import shutil

    folder = tmp_path / "train"
    shutil.copytree(train_jsonl.parent, folder)
    scenes = read_jsonl(folder / "scenes.jsonl")
    scenes[0]["objects"] = scenes[0]["objects"] + [scenes[0]["objects"][0]]
    (folder / "scenes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scenes))
    with pytest.raises(ValueError, match=f"{scenes[0]['image']} lists {len(scenes[0]['objects'])} objects"):
        control_rows(folder / "train.jsonl", 2, "cot")


def test_unknown_control_is_named(train_jsonl):
    with pytest.raises(ValueError, match="unknown SFT control 'labels'"):
        control_rows(train_jsonl, 2, "labels")


def test_the_verbal_arm_enumerates_then_counts_and_earns_both_rewards(train_jsonl):
    from demo.sft import warmup_rows
    from r1v_common.prompts import EVAL_PROMPTS

    study, verbal = warmup_rows(train_jsonl, arm="study"), warmup_rows(train_jsonl, arm="verbal")
    assert [r["prompt"] for r in study] == [r["prompt"] for r in verbal]  # only the answers differ
    solutions = [r["solution"] for r in read_jsonl(train_jsonl)]
    for row, solution in zip(verbal, solutions, strict=True):
        n = int(solution.split()[1])
        if row["prompt"][0]["content"].endswith(EVAL_PROMPTS["direct"].format(Question="")):
            assert _completions([row]) == [f"<answer>{n}</answer>"]  # a bare question gets a bare answer
        else:
            assert _completions([row]) == [f"<think>{' '.join(map(str, range(1, n + 1)))}</think><answer>{n}</answer>"]
    thinking = [c for c in _completions(verbal) if c.startswith("<think>")]
    assert thinking and format_reward(thinking) == [1.0] * len(thinking)
    with pytest.raises(ValueError, match="unknown arm 'loud'"):
        warmup_rows(train_jsonl, arm="loud")


def test_instruct_rows_are_the_broad_questions_then_the_counting_rows(tmp_path, train_jsonl):
    from demo.scenes import SceneConfig
    from demo.sft import instruct_rows, warmup_rows
    from r1v_job.synthetic import write_instruct_train

    broad = write_instruct_train(tmp_path / "instruct", 9, 112, seed=1, style=SceneConfig().instruct_style())
    rows = instruct_rows(broad, train_jsonl, seed=0, arm="verbal")
    assert rows[9:] == warmup_rows(train_jsonl, 0, "verbal")
    for row, source in zip(rows[:9], read_jsonl(broad), strict=True):
        answer = source["solution"][len("<answer> "):-len(" </answer>")]
        assert row["completion"][0]["content"].endswith(f"<answer>{answer}</answer>")
        assert source["problem"] in row["prompt"][0]["content"]
        assert row["image"] == str(broad.parent / source["image"])
