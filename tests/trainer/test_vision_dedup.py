"""r1v_job.vision_dedup on its own: which images count as the same, Qwen2.5-VL's tower, and the M-RoPE
positions computed once per row layout."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from r1v_job.vision_dedup import (
    SAMPLES_PER_IMAGE,
    disable_rope_index_once,
    disable_vision_dedup,
    distinct_images,
    enable_rope_index_once,
    enable_vision_dedup,
)


def test_only_images_with_equal_pixels_are_merged():
    torch.manual_seed(0)
    a, b = torch.randn(16, 12), torch.randn(16, 12)
    near_a = a.clone()
    near_a[0, 1] += 1.0  # not one of the sampled positions: the fingerprint agrees, the pixels do not
    sampled = {(16 * 12 - 1) * k // (SAMPLES_PER_IMAGE - 1) for k in range(SAMPLES_PER_IMAGE)}
    assert 1 not in sampled
    pixels = torch.cat([a, b, a, near_a, b])
    grid = torch.tensor([[1, 4, 4]] * 5)
    representatives, inverse = distinct_images(pixels, grid)
    assert representatives == [0, 1, 3] and inverse == [0, 1, 0, 2, 1]
    other_grid = torch.tensor([[1, 4, 4], [1, 2, 8]])  # same pixels, other layout: a different image
    assert distinct_images(torch.cat([a, a]), other_grid) == ([0, 1], [0, 1])


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory, clevr_train):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from r1v_job.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path_factory.mktemp("qwen25") / "model", arch="qwen2_5_vl")
    rows = [json.loads(line) for line in clevr_train.read_text().splitlines()[:3]]
    images = [Image.open(clevr_train.parent / row["image"]).convert("RGB") for row in rows]
    processor = AutoProcessor.from_pretrained(model_dir)
    batch = processor(images=[images[i // 3] for i in range(9)], padding=True, return_tensors="pt",
                      text=["<|vision_start|><|image_pad|><|vision_end|>How many items are there?"] * 9)
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32), batch


def test_qwen2_5_vl_encodes_each_image_once_with_the_same_logits_and_gradients(qwen25):
    model, batch = qwen25
    received = []
    model.model.visual.register_forward_pre_hook(lambda module, args, kwargs: received.append(len(kwargs["grid_thw"])),
                                                 with_kwargs=True)

    def forward_backward():
        model.zero_grad()
        logits = model(**batch).logits
        logits.float().pow(2).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits, grads = forward_backward()
    assert enable_vision_dedup(model)
    try:
        deduped_logits, deduped_grads = forward_backward()
    finally:
        disable_vision_dedup(model)
    assert received == [9, 3]
    assert torch.equal(logits, deduped_logits)
    assert any("visual" in n for n in grads)
    for name, grad in grads.items():
        assert (deduped_grads[name] - grad).norm() <= 1e-6 * grad.norm(), name
    assert "get_image_features" not in vars(model.model)  # disable restores the class's method


def test_models_without_a_qwen_vision_tower_are_left_alone():
    assert enable_vision_dedup(torch.nn.Linear(2, 2)) is False


def test_a_deep_copy_encodes_with_its_own_tower(qwen25):
    import copy

    model, batch = qwen25
    enable_vision_dedup(model)
    try:
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for p in twin.model.visual.parameters():
                p.add_(0.5)
            assert not torch.equal(model(**batch).logits, twin(**batch).logits)
        assert twin.model.get_image_features.__self__ is twin.model
    finally:
        disable_vision_dedup(model)


def test_rope_positions_once_per_layout_equal_transformers_with_padding_and_several_images(qwen25):
    """Qwen2.5-VL (Qwen2-VL in tests/trainer/test_speed_levers.py): rows of different lengths (left
    padding), one or two images of different sizes per row, repeated layouts."""
    from transformers import AutoProcessor

    model, batch = qwen25
    processor = AutoProcessor.from_pretrained(model.name_or_path)
    small, wide = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 56), "blue")
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    texts = [pad + "Count.", pad + "How many items are there in this scene?", pad + pad + "Both?", pad + "Count."]
    images = [[small], [wide], [wide, small], [small]]
    processor.tokenizer.padding_side = "left"
    rows = processor(images=images, text=texts, padding=True, return_tensors="pt")
    inputs = {key: rows[key] for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    expected = model.model.get_rope_index(**inputs)
    assert enable_rope_index_once(model)
    try:
        first, again = model.model.get_rope_index(**inputs), model.model.get_rope_index(**inputs)
        # Rows 0 and 3 share a layout: 3 layouts computed, then served from the cache.
        assert len(vars(model.model)["_r1v_rope_cache"]) == 3
        logits_once = model(**batch).logits
    finally:
        disable_rope_index_once(model)
    for positions, deltas in (first, again):
        assert positions.dtype == expected[0].dtype and torch.equal(positions, expected[0])
        assert torch.equal(deltas, expected[1])
    assert (expected[0][:, 0, 0] == 0).all() and expected[0].amax() > 0  # row 0 is padded: zeros there
    assert torch.equal(logits_once, model(**batch).logits)
    assert "get_rope_index" not in vars(model.model)
