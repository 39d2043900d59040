"""The tiny model and the synthetic scenes: offline, loadable, deterministic."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from r1v_common.prompts import conversation
from r1v_job.synthetic import CLEVR_STYLE, SUPERCLEVR_STYLE, draw_scene
from r1v_job.synthetic import main as synthetic_main
from r1v_job.tiny import QWEN_SPECIAL_TOKENS, save_tiny_model


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_model_loads_with_auto_classes_and_generates(arch, tmp_path):
    out = save_tiny_model(tmp_path / arch, arch=arch)
    processor = AutoProcessor.from_pretrained(out, padding_side="left")
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.model_type == arch
    tok = processor.tokenizer
    # Every special token is one id, or <|image_pad|> splits and TRL reports an image-token mismatch.
    for token in QWEN_SPECIAL_TOKENS:
        assert len(tok(token, add_special_tokens=False).input_ids) == 1, token
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    text = processor.apply_chat_template(conversation("How many items are there in the image?"),
                                         add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    batch = processor(text=[text, text], images=[Image.new("RGB", (112, 112)), Image.new("RGB", (56, 84))],
                      return_tensors="pt", padding=True)
    n_image_tokens = int((batch.input_ids == model.config.image_token_id).sum())
    assert n_image_tokens == int(batch.image_grid_thw.prod(-1).sum()) // 4
    with torch.no_grad():
        out_ids = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] == batch.input_ids.shape[1] + 4


def test_scenes_are_deterministic_and_the_splits_differ(tmp_path):
    for name in ("a", "b"):
        synthetic_main(["--out", str(tmp_path / name), "--train", "6", "--test", "6", "--seed", "3"])
    a_train = (tmp_path / "a/clevr/train.jsonl").read_text()
    assert a_train == (tmp_path / "b/clevr/train.jsonl").read_text()
    assert (tmp_path / "a/clevr/images/clevr_000002.png").read_bytes() == \
        (tmp_path / "b/clevr/images/clevr_000002.png").read_bytes()
    train = [json.loads(line) for line in a_train.splitlines()]
    test = [json.loads(line) for line in (tmp_path / "a/superclevr/questions.jsonl").read_text().splitlines()]
    assert set(train[0]) == {"image", "problem", "solution"}
    assert set(test[0]) == {"image_path", "question", "ground_truth"}
    assert all(isinstance(r["ground_truth"], int) and 3 <= r["ground_truth"] <= 10 for r in test)
    # Different floors and palettes: the held-out split is out of distribution.
    train_px = Image.open(tmp_path / "a/clevr" / train[0]["image"]).getpixel((0, 0))
    test_px = Image.open(tmp_path / "a/superclevr" / test[0]["image_path"]).getpixel((0, 0))
    assert train_px != test_px


@pytest.mark.parametrize("style", [CLEVR_STYLE, SUPERCLEVR_STYLE], ids=lambda s: s.name)
def test_cell_layout_puts_each_object_inside_its_own_cell(style):
    # The demo's layout: with 28-px cells (one Qwen2-VL visual token), no token may see two objects
    # or part of one: the non-empty cells are exactly the objects, and cell borders stay floor.
    style = replace(style, cell=28, radius=(0.06, 0.115))
    rng = random.Random(7)
    for count in (1, 6, 16):
        pixels = np.asarray(draw_scene(style, count, 112, rng)).astype(int)
        object_px = (np.abs(pixels - np.array(style.background)).sum(-1) > 0)
        cells = object_px.reshape(4, 28, 4, 28).transpose(0, 2, 1, 3)
        assert int(cells.any(axis=(2, 3)).sum()) == count
        assert not cells[:, :, [0, -1], :].any() and not cells[:, :, :, [0, -1]].any()
    with pytest.raises(ValueError, match="cannot place 17 objects"):
        draw_scene(style, 17, 112, rng)
    # A wider than tall image (the benchmark's 480x320 scenes): 4 x 2 cells of 28 px in 112 x 56.
    for count in (1, 8):
        pixels = np.asarray(draw_scene(style, count, (112, 56), rng)).astype(int)
        assert pixels.shape[:2] == (56, 112)
        cells = (np.abs(pixels - np.array(style.background)).sum(-1) > 0).reshape(2, 28, 4, 28)
        assert int(cells.any(axis=(1, 3)).sum()) == count
