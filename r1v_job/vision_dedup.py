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

`enable_rope_index_once(model)` does the same for the M-RoPE position ids: transformers' `get_rope_index`
loops over the rows in Python with host syncs per row (`.tolist()`, `.item()`, boolean indexing), in
every forward (generation prefill, each reference chunk, each policy micro-batch), for positions that
depend only on a row's layout: its padding, its text and image-token runs and its images' grids. The
replacement reads the masks and grids to the host once per call, computes each distinct row layout's
positions once (then from a cache) and sends the whole (3, rows, length) tensor to the device in one
copy. Integer positions: bit-identical to transformers' (tests/trainer/test_speed_levers.py).
"""

from __future__ import annotations

import logging
from itertools import accumulate
from types import MethodType

import numpy as np
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


# --- M-RoPE position ids once per row layout -------------------------------------------------------

_ROPE_CACHE_ROWS = 4096  # distinct row layouts kept (a step has a few dozen); the cache starts over past it


def _image_positions(start: int, grid: tuple[int, int, int], merge: int) -> np.ndarray:
    """(3, tokens) positions of one image's merged tokens: transformers' get_vision_position_ids for an
    image (temporal step 1), offset by `start`."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    temporal, height, width = np.meshgrid(np.arange(t), np.arange(h) + start, np.arange(w) + start, indexing="ij")
    positions = np.stack([temporal, height, width]).reshape(3, -1)
    positions[0] += start
    return positions


def _row_positions(types: np.ndarray, grids: list, merge: int) -> tuple[np.ndarray, int, int] | None:
    """One row's (3, n) positions, images used and rope delta, as transformers' get_rope_index computes
    them for a row of text (type 0) and image (type 1) runs; None for anything else (videos, an image
    run whose length does not match its grid), which the caller leaves to transformers."""
    n = len(types)
    bounds = [0, *(np.flatnonzero(np.diff(types)) + 1).tolist(), n]
    pieces, position, used = [], 0, 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        kind = int(types[start])
        if kind == 0:
            pieces.append(np.broadcast_to(np.arange(end - start) + position, (3, end - start)))
            position += end - start
        elif kind == 1 and used < len(grids):
            grid = grids[used]
            used += 1
            block = _image_positions(position, grid, merge)
            if block.shape[1] != end - start:
                return None
            pieces.append(block)
            position += max(grid[1], grid[2]) // merge
        else:
            return None
    positions = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), dtype=np.int64)
    delta = int(positions.max()) + 1 - n if n else 0
    return positions, used, delta


def _get_rope_index_once(self, input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                         attention_mask=None, **kwargs):
    """transformers' get_rope_index for image-and-text rows, each distinct row layout computed once and
    the result sent to the device in one copy (bound to one model instance by enable_rope_index_once)."""
    original = type(self).get_rope_index.__get__(self)

    def fallback():
        return original(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                        video_grid_thw=video_grid_thw, attention_mask=attention_mask, **kwargs)

    if (video_grid_thw is not None or image_grid_thw is None or mm_token_type_ids is None
            or mm_token_type_ids.shape != input_ids.shape
            or attention_mask is not None and attention_mask.shape != input_ids.shape):
        return fallback()  # videos, or inputs laid out otherwise: transformers' own loop
    merge = self.config.vision_config.spatial_merge_size
    types = mm_token_type_ids.cpu().numpy()
    mask = None if attention_mask is None else attention_mask.cpu().numpy().astype(bool)
    grids = [tuple(grid) for grid in image_grid_thw.tolist()]
    cache = self.__dict__.setdefault("_r1v_rope_cache", {})
    if len(cache) > _ROPE_CACHE_ROWS:
        cache.clear()
    out = np.zeros((3, *types.shape), dtype=np.int64)
    deltas, used = [], 0
    for row in range(types.shape[0]):
        row_types = types[row] if mask is None else types[row][mask[row]]
        images = int(np.count_nonzero(np.diff(row_types, prepend=0) == 1)) if len(row_types) else 0
        row_grids = grids[used:used + images]
        key = (merge, row_types.tobytes(), tuple(row_grids))
        if key not in cache:
            computed = _row_positions(row_types, row_grids, merge)
            if computed is None or computed[1] != images:
                return fallback()
            cache[key] = (computed[0], computed[2])
        positions, delta = cache[key]
        used += images
        if mask is None:
            out[:, row] = positions
        else:
            out[:, row, mask[row]] = positions
        deltas.append(delta)
    position_ids = torch.from_numpy(out).to(device=input_ids.device, dtype=input_ids.dtype)
    return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def enable_rope_index_once(model: torch.nn.Module) -> bool:
    """Compute M-RoPE position ids once per distinct row layout in `model` (any wrapper of a Qwen2-VL /
    Qwen2.5-VL). Returns False, changing nothing, for other architectures."""
    targets = _targets(model)
    for inner in targets:
        inner.__dict__["get_rope_index"] = MethodType(_get_rope_index_once, inner)
    return bool(targets)


def disable_rope_index_once(model: torch.nn.Module) -> None:
    for inner in _targets(model):
        inner.__dict__.pop("get_rope_index", None)
        inner.__dict__.pop("_r1v_rope_cache", None)
