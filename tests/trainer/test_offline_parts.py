"""The tiny model and the synthetic scenes: offline, loadable, deterministic."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from r1v_job.prompts import conversation
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
