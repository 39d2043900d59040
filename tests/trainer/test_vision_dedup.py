"""r1v_job.vision_dedup on its own: which images count as the same, and Qwen2.5-VL's tower."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from r1v_job.vision_dedup import SAMPLES_PER_IMAGE, disable_vision_dedup, distinct_images, enable_vision_dedup


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
