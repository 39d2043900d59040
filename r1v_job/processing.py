"""The one place a Qwen2-VL processor is built: the trainer, the evaluator and the benchmark call
`load_processor`, so every part feeds a model the same pixels.

Imports only transformers (the evaluator's image has no TRL).

R1-V ran transformers 4.49's slow, PIL-based Qwen2-VL image processor. transformers 5's AutoProcessor
picks the torchvision backend instead, whose resize gives pixel_values up to 0.03 apart (about two
grey levels) on 480x320 and 640x480 images; the PIL backend gives R1-V's pixels exactly. AutoProcessor
cannot take `backend="pil"` itself (the video processor has no PIL backend and the load fails), so
the image processor is loaded on its own and put in place. (Passed as `image_processor=` to
AutoProcessor it also lands in the tokenizer's init kwargs, and saving a checkpoint fails.)
"""

from __future__ import annotations

from pathlib import Path

IMAGE_BACKENDS = ("pil", "torchvision")


def load_processor(path: str | Path, *, image_backend: str = "pil", min_pixels: int | None = None,
                   max_pixels: int | None = None, revision: str | None = None, padding_side: str = "left"):
    """The processor saved at `path` (a folder or Hub id), its image processor on `image_backend`.

    `min_pixels`/`max_pixels` set Qwen2-VL's pixel budget per image (R1-V: 3136 and 401408); left
    None, the saved value is kept. Prompts are padded on `padding_side` (left: generation appends
    on the right).
    """
    from transformers import AutoImageProcessor, AutoProcessor

    if image_backend not in IMAGE_BACKENDS:
        raise ValueError(f"image_backend {image_backend!r}: choose one of {', '.join(IMAGE_BACKENDS)} "
                         "(pil gives R1-V's pixels)")
    kwargs = {"revision": revision} if revision else {}
    image_processor = AutoImageProcessor.from_pretrained(path, backend=image_backend, **kwargs)
    if min_pixels or max_pixels:
        # transformers 5's form of the budget is size={shortest,longest}_edge (min_pixels/max_pixels
        # are deprecated); an unset bound keeps the saved value.
        size = image_processor.size
        image_processor = AutoImageProcessor.from_pretrained(path, backend=image_backend, size={
            "shortest_edge": min_pixels or size["shortest_edge"],
            "longest_edge": max_pixels or size["longest_edge"],
        }, **kwargs)
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    processor.image_processor = image_processor
    processor.tokenizer.padding_side = padding_side
    return processor
