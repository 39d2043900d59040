"""The evaluator scores what R1-V scored: its pixels (PIL image backend, as the trainer's) and its
generation budget (256 new tokens)."""

import json

import torch
from PIL import Image

from eval_job import cli
from r1v_job.synthetic import CLEVR_STYLE, draw_scene

R1V_BUDGET = {"shortest_edge": 3136, "longest_edge": 401408}


def test_defaults_are_r1vs_budget_and_pixels():
    args = cli.parse_args(["--model", "m", "--data", "d", "--out", "o"])
    assert args.max_new_tokens == 256 and args.image_backend == "pil"


def test_generate_receives_pil_backend_pixels(tiny_model, tmp_path):
    """The pixels model.generate receives equal a PIL-backend Qwen2-VL image processor's, bit for bit,
    on CLEVR-sized 480x320 scenes (which Qwen2-VL resizes); the torchvision backend's differ there."""
    import random

    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    from eval_job.generate import load_generator

    rng = random.Random(0)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"scene{i}.png")
        draw_scene(CLEVR_STYLE, 3 + i, (480, 320), rng).save(paths[-1])
    generator = load_generator(tiny_model, min_pixels=3136, max_pixels=401408)
    captured = {}
    real_generate = generator.model.generate

    def generate(**kw):
        captured.update(kw)
        return real_generate(**kw)

    generator.model.generate = generate
    generator.generate(paths, ["How many items are there in the image?"] * 2, "{Question}", max_new_tokens=1)
    images = [Image.open(p).convert("RGB") for p in paths]
    expected = Qwen2VLImageProcessorPil(size=R1V_BUDGET)(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(captured["pixel_values"], expected)
    other = Qwen2VLImageProcessor(size=R1V_BUDGET)(images=images, return_tensors="pt")["pixel_values"]
    assert (other - expected).abs().max() > 1e-3


def test_the_image_backend_is_a_setting_of_the_saved_scores(tiny_model, questions, tmp_path):
    """Scores made with another backend are not reused: the backend is in summary.json's settings."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model), "--data", str(questions), "--out", str(out), "--max-new-tokens", "1"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "final" / "cot" / "summary.json").read_text())
    assert summary["settings"]["image_backend"] == "pil" and summary["settings"]["max_new_tokens"] == 1
    assert cli.main([*argv, "--image-backend", "torchvision"]) == 0
    again = json.loads((out / "final" / "cot" / "summary.json").read_text())
    assert again["settings"]["image_backend"] == "torchvision"
