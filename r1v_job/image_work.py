"""CPU image work of a GRPO step, done once per distinct image and only for rows that are used.

On a GPU the step's "other" time is nearly all image work on the training process's critical path
(docs/performance.md has the figures):
- the Trainer prefetches one batch per accumulation step and TRL keeps only the first, so 7 x 128
  rows were decoded and thrown away at micro-batch 16. `images_decoded_on_use` leaves the
  dataset's images undecoded; `decode_images_once` decodes the rows TRL does use, each distinct
  image once, and gives all rollouts of a prompt the same PIL object;
- the image processor ran on all 128 copies twice per step, where the 16 distinct images once
  would do. `process_each_image_once` makes the processor's image step reuse, within a step,
  what it computed for an equal image: the same image processor, the same call, the same pixels.
- the processor then concatenated 128 copies of 16 images' pixels on the CPU (450 MB fp32 for
  480x320 scenes, twice a step) for the Trainer to copy them to the GPU. Given a `device`,
  `process_each_image_once` sends each distinct image's pixels there once and builds the rollouts'
  `pixel_values` there by indexing: the same values, 1/G of the host work and of the copy.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import datasets
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import make_flat_list_of_images

_IMAGE_COLUMNS = ("image", "images")


def images_decoded_on_use(dataset):
    """`dataset` with its `image` column (a datasets Image feature, as r1v_job.data makes it) left as raw
    {"bytes", "path"}: a schema change, nothing is rewritten. Other datasets (iterable ones, lists of
    images, paths or arrays) are returned as they are and decoded as before."""
    feature = dataset.features.get("image") if isinstance(dataset, datasets.Dataset) else None
    if isinstance(feature, datasets.Image) and feature.decode:
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def _raw_key(value) -> tuple | None:
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return value.get("path"), value.get("bytes")
    return None


class UnusableImage:
    """Stands in for an image that failed to decode (`decode_images_once(..., keep_going=True)`)."""

    def __init__(self, reason: str):
        self.reason = reason


def decode_images_once(rows: list[dict], keep_going: bool = False) -> list[dict]:
    """The rows with raw images decoded as datasets' Image feature decodes them, each distinct one once
    (rows repeating an image share its PIL object). Decoded images pass through unchanged. With
    `keep_going`, an image that fails to decode becomes an UnusableImage naming the file and the error."""
    decoder, decoded = datasets.Image(), {}

    def decode(value):
        key = _raw_key(value)
        if key is None:
            return value
        if key not in decoded:
            try:
                decoded[key] = decoder.decode_example(value)
            except Exception as exc:  # PIL raises many types for bad files
                if not keep_going:
                    raise
                decoded[key] = UnusableImage(f"{value.get('path') or 'image bytes'}: unreadable image "
                                             f"({type(exc).__name__}: {exc})")
        return decoded[key]

    out = []
    for row in rows:
        row = dict(row)
        for column in _IMAGE_COLUMNS:
            if column in row and row[column] is not None:
                value = row[column]
                row[column] = [decode(v) for v in value] if isinstance(value, list) else decode(value)
        out.append(row)
    return out


class _ImageCache:
    """Processed pixels of each distinct image seen in one step, keyed by content (mode, size, digest of
    the pixels; each image object hashed once) and by the processor's keyword arguments."""

    FIELDS = ("pixel_values", "image_grid_thw")

    def __init__(self):
        self.entries: dict = {}
        self._by_object: dict[int, tuple] = {}
        self._alive: list = []  # keeps the objects whose id() is a key alive for the step

    def key(self, image: Image.Image) -> tuple:
        known = self._by_object.get(id(image))
        if known is None:
            known = (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
            self._by_object[id(image)] = known
            self._alive.append(image)
        return known


def _assemble(chunks: list[torch.Tensor], keys: list) -> torch.Tensor:
    """The images' pixels in `keys` order from each distinct one's `chunks` (equal keys, equal chunks):
    the distinct ones once, then one index_select on their device."""
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == len(keys):
        return torch.cat(chunks)
    first = {key: chunk for key, chunk in zip(keys, chunks)}
    unique = torch.cat([first[key] for key in distinct])
    starts, offset = {}, 0
    for key in distinct:
        starts[key] = offset
        offset += len(first[key])
    rows = torch.cat([torch.arange(starts[key], starts[key] + len(first[key])) for key in keys])
    return unique.index_select(0, rows.to(unique.device, non_blocking=True))


class UnprocessableImages(Exception):
    """The image processor failed on these images of the step (`failed`: [(image, reason)]);
    `first_call`: in the step's first processor call, before any generation."""

    def __init__(self, failed: list, first_call: bool):
        super().__init__("; ".join(reason for _, reason in failed))
        self.failed, self.first_call = failed, first_call


def _name_the_failing_images(processor, images: list, kwargs: dict, first_call: bool) -> None:
    """After the image processor failed on `images`: raises UnprocessableImages naming those it fails on
    alone; returns when each passes alone (the failure is not an image's)."""
    failed = []
    for image in images:
        try:
            processor.image_processor([image], **kwargs)
        except Exception as exc:  # whatever the processor raises, this image is its cause
            failed.append((image, f"the image processor failed ({type(exc).__name__}: {exc})"))
    if failed:
        raise UnprocessableImages(failed, first_call)


@contextmanager
def process_each_image_once(processor, device: torch.device | str | None = None):
    """While active, `processor(images=..., ...)` runs its image processor only on images it has not
    processed yet in this context and assembles the rest from those results. For Qwen2-VL-style
    processors (pixel_values as concatenated patches + image_grid_thw); others run as they are.

    With `device`, each distinct image's pixels are copied there once and the returned `pixel_values`
    is built there (indexing the distinct images), so the host neither concatenates the rollouts'
    copies nor sends them; the Trainer's later move to `device` is then a no-op."""
    if not hasattr(processor, "image_processor") or "_process_images" in vars(processor):
        yield None
        return
    cache = _ImageCache()
    original = processor._process_images

    def _process_images(images, **kwargs):
        flat = make_flat_list_of_images(images)
        if not flat or not all(isinstance(image, Image.Image) for image in flat):
            return original(images, **kwargs)
        settings = repr(sorted((k, v) for k, v in kwargs.items() if k != "return_tensors"))
        keys = [(cache.key(image), settings) for image in flat]
        todo, todo_keys = [], []
        for image, key in zip(flat, keys):
            if key not in cache.entries and key not in todo_keys:
                todo.append(image)
                todo_keys.append(key)
        if todo:
            try:
                fresh = processor.image_processor(todo, **kwargs)
            except Exception:
                _name_the_failing_images(processor, todo, kwargs, first_call=not cache.entries)
                raise
            if set(fresh.keys()) != set(_ImageCache.FIELDS):
                return original(images, **kwargs)  # a layout this cache does not know
            grid = torch.as_tensor(fresh["image_grid_thw"])
            pixels = torch.as_tensor(fresh["pixel_values"])
            if device is not None:
                pixels = pixels.to(device)  # the distinct images only, in one copy
            chunks = torch.split(pixels, grid.prod(-1).tolist())
            for key, chunk, row in zip(todo_keys, chunks, grid):
                cache.entries[key] = (chunk, row)
        chunks = [cache.entries[key][0] for key in keys]
        processed = BatchFeature({
            "pixel_values": torch.cat(chunks) if device is None else _assemble(chunks, keys),
            "image_grid_thw": torch.stack([cache.entries[key][1] for key in keys]),
        })
        replacements = []
        if getattr(processor, "image_token", None) is not None:
            replacements = [processor.replace_image_token(processed, image_idx=i, **kwargs) for i in range(len(flat))]
        return processed, replacements

    processor._process_images = _process_images
    try:
        yield cache
    finally:
        del processor._process_images
