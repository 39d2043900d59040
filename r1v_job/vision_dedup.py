"""Encode each distinct image once per forward pass and hand its features to every rollout that shows it.

TRL gives each of a prompt's G rollouts its own copy of the image, and the generation prefill, the
reference pass and the policy pass each run the vision tower on every copy: 7/8 of the tower's work
(55% of a Qwen2-VL-2B forward's FLOPs at 8 rollouts) is repeated. `enable_vision_dedup(model)`
replaces, on that model instance only, Qwen2-VL's / Qwen2.5-VL's `get_image_features` (the one place
transformers 5.24 runs the vision tower for images) with one that

1. splits `pixel_values` into images by `image_grid_thw`, fingerprints each by its grid and a few
   sampled pixel values (hashing every pixel cost more than it saved) and confirms every match
   with an exact comparison, so two images are merged only when their pixels are equal;
2. runs the original `get_image_features` on the distinct images only;
3. returns each image's features at every position it had, by index: autograd then adds the G
   rollouts' gradients into one encoder backward, so values and gradients stay those of the
   per-copy computation (bit-identical log-probs and decoder gradients on the tiny model, vision
   gradients within float rounding; tests/trainer/test_speed_levers.py).

The parameters, the state dict and every other method are untouched; `disable_vision_dedup` undoes it.
"""

from __future__ import annotations

import logging
from itertools import accumulate
from types import MethodType

import torch

logger = logging.getLogger(__name__)

# Inner models whose get_image_features(pixel_values, image_grid_thw) returns the vision tower's
# output with `pooler_output` split per image and `last_hidden_state` the tower's patch states.
SUPPORTED = ("Qwen2VLModel", "Qwen2_5_VLModel")
SAMPLES_PER_IMAGE = 64  # pixel values read per image for its fingerprint (then confirmed exactly)


def distinct_images(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """(representatives, inverse): the images to encode (the first of each set of equal ones; two
    images are merged only when all their pixels and their grids are equal) and, for every image,
    the position of its representative in that list."""
    patches = image_grid_thw.prod(-1).tolist()
    starts = [0, *accumulate(patches)]
    width = pixel_values.shape[-1]
    # One gather and one device->host copy for every fingerprint: SAMPLES_PER_IMAGE evenly spaced
    # values of each image's flattened patches.
    offsets = torch.tensor([[start * width + (n * width - 1) * k // (SAMPLES_PER_IMAGE - 1)
                             for k in range(SAMPLES_PER_IMAGE)] for start, n in zip(starts, patches)],
                           device=pixel_values.device)
    sampled = pixel_values.reshape(-1)[offsets].float().cpu().numpy()
    grids = image_grid_thw.tolist()
    candidates: dict[tuple, list[int]] = {}
    for i in range(len(patches)):
        candidates.setdefault((tuple(grids[i]), sampled[i].tobytes()), []).append(i)

    representative_of = list(range(len(patches)))
    for members in candidates.values():
        # Members share a grid, hence a patch count: each is compared with the first, one sync in all.
        first, n = members[0], patches[members[0]]
        reference = pixel_values[starts[first]:starts[first] + n]
        same = torch.stack([(pixel_values[starts[i]:starts[i] + n] == reference).all() for i in members]).tolist()
        for i, equal in zip(members, same):
            if equal:  # else: equal samples but different pixels, never merged, encoded on its own
                representative_of[i] = first
    representatives = sorted(set(representative_of))
    position = {image: k for k, image in enumerate(representatives)}
    inverse = [position[r] for r in representative_of]
    return representatives, inverse


def _get_image_features_once(self, pixel_values, image_grid_thw=None, **kwargs):
    """The model's get_image_features on the distinct images only, each one's features handed back at
    every position it had (bound to one model instance by enable_vision_dedup)."""
    original = type(self).get_image_features.__get__(self)
    if (image_grid_thw is None or len(image_grid_thw) < 2 or kwargs.get("output_hidden_states")
            or kwargs.get("output_attentions")):
        return original(pixel_values, image_grid_thw, **kwargs)
    representatives, inverse = distinct_images(pixel_values, image_grid_thw)
    if len(representatives) == len(inverse):
        return original(pixel_values, image_grid_thw, **kwargs)
    patches = image_grid_thw.prod(-1).tolist()
    starts = [0, *accumulate(patches)]
    unique_pixels = torch.cat([pixel_values[starts[i]:starts[i + 1]] for i in representatives])
    outputs = original(unique_pixels, image_grid_thw[representatives], **kwargs)
    features = outputs.pooler_output  # per distinct image
    outputs.pooler_output = tuple(features[j] for j in inverse)
    if getattr(outputs, "last_hidden_state", None) is not None:
        # The tower's patch states, back in the caller's layout (index_select: gradients add up).
        unique_starts = [0, *accumulate(patches[i] for i in representatives)]
        index = torch.cat([torch.arange(unique_starts[j], unique_starts[j + 1]) for j in inverse])
        outputs.last_hidden_state = outputs.last_hidden_state.index_select(0, index.to(pixel_values.device))
    return outputs


def _targets(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in SUPPORTED]


def vision_towers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The vision towers (`visual`) of the Qwen2-VL / Qwen2.5-VL models inside `model`."""
    return [inner.visual for inner in _targets(model)]


def enable_vision_dedup(model: torch.nn.Module) -> bool:
    """Encode each distinct image once per pass in `model` (any wrapper of a Qwen2-VL / Qwen2.5-VL).
    Returns False, changing nothing, for other architectures."""
    targets = _targets(model)
    if not targets:
        logger.info("vision dedup: %s has no Qwen2-VL/Qwen2.5-VL vision model; left as it is", type(model).__name__)
        return False
    for inner in targets:
        # A bound method in the instance's __dict__: copy.deepcopy rebinds it to the copy.
        inner.__dict__["get_image_features"] = MethodType(_get_image_features_once, inner)
    return True


def disable_vision_dedup(model: torch.nn.Module) -> None:
    for inner in _targets(model):
        inner.__dict__.pop("get_image_features", None)
