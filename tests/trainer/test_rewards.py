"""The reward table: R1-V's format rule with DOTALL, our answer-only accuracy, R1-V's flawed accuracy."""

import pytest

from r1v_job.rewards import (REWARD_FUNCS, accuracy_reward, accuracy_reward_r1v, format_reward,
                             get_reward_funcs)

SOL3 = "<answer> 3 </answer>"
SOL5 = "<answer> 5 </answer>"

# completion, solution, format, accuracy (ours), accuracy (R1-V)
TABLE = [
    ("<think>three cubes</think><answer>3</answer>", SOL3, 1, 1, 1),
    ("<think>one\ntwo\nthree</think>\n<answer>3</answer>", SOL3, 1, 1, 1),  # multi-line thinking
    ("<think>x</think><answer>\n 3 \n</answer>", SOL3, 1, 1, 1),  # whitespace/newlines inside <answer>
    ("<think>x</think><answer>3.0</answer>", SOL3, 1, 1, 0),  # R1-V: parse finds nothing, strings differ
    ("<think>maybe 5? no</think><answer>4</answer>", SOL5, 1, 0, 1),  # R1-V pays the number in the thinking
    ("<think>x</think><answer>4</answer>", SOL3, 1, 0, 0),  # wrong answer
    ("<answer>3</answer>", SOL3, 0, 1, 1),  # no thinking: right answer, wrong format
    ("<think>there are 3</think>", SOL3, 0, 0, 1),  # no answer tag: ours pays nothing, R1-V pays
    ("<think>x</think> and so <answer>3</answer>", SOL3, 0, 1, 1),  # text between the tags
    ("<think>x</think><answer>3</answer> done", SOL3, 0, 1, 1),  # text after the answer
    ("3", SOL3, 0, 0, 1),  # a bare number
    ("", SOL3, 0, 0, 0),  # empty completion
    ("<think>x</think><answer>three</answer>", SOL3, 1, 0, 0),  # words are not numbers
]


@pytest.mark.parametrize("completion,solution,fmt,acc,acc_r1v", TABLE)
def test_reward_table(completion, solution, fmt, acc, acc_r1v):
    assert format_reward([completion]) == [fmt]
    assert accuracy_reward([completion], solution=[solution]) == [acc]
    assert accuracy_reward_r1v([completion], solution=[solution]) == [acc_r1v]


def test_chat_message_completions_score_like_strings():
    texts = [row[0] for row in TABLE]
    solutions = [row[1] for row in TABLE]
    messages = [[{"role": "assistant", "content": t}] for t in texts]
    for fn in REWARD_FUNCS.values():
        assert fn(messages, solution=solutions) == fn(texts, solution=solutions)


def test_each_completion_is_scored_against_its_own_solution():
    completions = ["<think>a</think><answer>3</answer>", "<think>b</think><answer>3</answer>"]
    assert accuracy_reward(completions, solution=[SOL3, SOL5]) == [1.0, 0.0]


def test_registry_names_unknown_rewards():
    assert get_reward_funcs(["format_reward", "accuracy_reward"]) == [format_reward, accuracy_reward]
    with pytest.raises(ValueError, match="unknown \\['acuracy_reward'\\]"):
        get_reward_funcs(["acuracy_reward"])


def test_rewards_by_import_path_sit_beside_the_registry():
    from r1v_job.rewards import tag_count_reward

    assert get_reward_funcs(["format_reward", "r1v_job.rewards:tag_count_reward"]) == [format_reward, tag_count_reward]


@pytest.mark.parametrize("names, message", [
    ("accuracy_reward", r"reward_funcs: 'accuracy_reward': must be a non-empty list"),  # YAML scalar, not a list
    ([], r"must be a non-empty list"),
    (["no_such_module_xyz:fn"], r"cannot import module 'no_such_module_xyz'"),
    (["r1v_job.rewards:nothing"], r"module 'r1v_job.rewards' has no function 'nothing'"),
])
def test_reward_lists_that_name_no_function_are_refused_whole(names, message):
    with pytest.raises(ValueError, match=message):
        get_reward_funcs(names)


def test_tag_count_reward_pays_each_tag_that_appears_once():
    from r1v_job.rewards import tag_count_reward

    assert tag_count_reward(["<think>x</think><answer>3</answer>", "<think> <think>", "no tags", "</answer>"]) == \
        [1.0, 0.0, 0.0, 0.25]
