"""R1-V's prompt strings, exact (../shared/reference/r1v-recipe.md, "Prompts").

Shared by the trainer and the evaluator so the two can never drift apart. Training and evaluation
prompts differ in R1-V ("Output" vs "First output", and two spaces after the question in training):
both are kept verbatim.
"""

TRAIN_PROMPT = (
    "{Question}  Output the thinking process in <think> </think> and final answer (number) in "
    "<answer> </answer> tags."
)

EVAL_PROMPTS = {
    # R1-V's evaluation prompt: the headline score.
    "cot": (
        "{Question} First output the thinking process in <think> </think> and final answer (number) in "
        "<answer> </answer> tags."
    ),
    # The training prompt, to score a policy on exactly what it was trained on.
    "train": TRAIN_PROMPT,
    # A bare number: untrained Qwen2-VL-2B scores 79-86% this way, so it belongs beside every cot score.
    "direct": "{Question} Answer: ",
}


def conversation(question: str, template: str = TRAIN_PROMPT) -> list[dict]:
    """One user turn holding the image, then the question in `template`.

    The image slot is a bare `{"type": "image"}`: TRL's GRPOTrainer fills it from the `image` column,
    and processors fill it from the `images=` argument.
    """
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": template.format(Question=question)}],
        }
    ]
