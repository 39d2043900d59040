"""Batched greedy generation with a Qwen2-VL-style model (AutoProcessor + AutoModelForImageTextToText).

bf16 on a GPU, fp32 on CPU (bf16 matmuls are slow or unsupported on many CPUs); flash_attention_2
when flash-attn is installed and a GPU is present, else PyTorch's sdpa. Prompts are left-padded so
every row of a batch ends where its generation starts.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from r1v_common.processing import load_processor
from r1v_common.prompts import conversation

logger = logging.getLogger(__name__)

# Either name marks a folder that holds a processor (transformers 5 writes processor_config.json).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def has_processor(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in _PROCESSOR_FILES)


def runtime() -> tuple[str, torch.dtype, str]:
    """(device, dtype, attention implementation) for this machine."""
    if torch.cuda.is_available():
        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        return "cuda", torch.bfloat16, attn
    return "cpu", torch.float32, "sdpa"


class Generator:
    """One loaded model and processor; `generate` answers questions about images."""

    def __init__(self, model_dir: str | Path, processor_dir: str | Path | None = None, *,
                 min_pixels: int | None = None, max_pixels: int | None = None, image_backend: str = "pil"):
        self.device, dtype, attn = runtime()
        # The trainer's processor construction (r1v_common.processing): the same pixels in both.
        self.processor = load_processor(processor_dir or model_dir, image_backend=image_backend,
                                        min_pixels=min_pixels, max_pixels=max_pixels)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
        self.model.to(self.device).eval()
        logger.info("loaded %s on %s (%s, %s)", model_dir, self.device, dtype, attn)

    def image_problem(self, path: Path) -> str | None:
        """Why the processor fails on the image at `path` (opened as `generate` opens it), or None."""
        try:
            with Image.open(path) as image:
                self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        except Exception as exc:  # whatever PIL or the processor raises, this image is the cause
            return f"{type(exc).__name__}: {exc}"
        return None

    @torch.inference_mode()
    def generate(self, images: list[Path], questions: list[str], template: str, max_new_tokens: int) -> list[str]:
        """One decoded completion per (image, question); `template` is one of r1v_common.prompts'."""
        texts = [self.processor.apply_chat_template(conversation(q, template), tokenize=False,
                                                    add_generation_prompt=True) for q in questions]
        pictures = []
        for path in images:
            with Image.open(path) as image:
                pictures.append(image.convert("RGB"))
        inputs = self.processor(text=texts, images=pictures, padding=True, return_tensors="pt").to(self.device)
        tokenizer = self.processor.tokenizer
        # Greedy: do_sample=False, and the sampling knobs some checkpoints ship (Qwen2-VL's
        # temperature/top_p/top_k) are cleared so they are neither applied nor warned about.
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


def load_generator(model_dir: str | Path, fallback_processor_dir: str | Path | None = None, *,
                   min_pixels: int | None = None, max_pixels: int | None = None,
                   image_backend: str = "pil") -> Generator:
    """A Generator for `model_dir`; a checkpoint saved without its processor borrows the final
    model's (`fallback_processor_dir`)."""
    processor_dir = model_dir
    if not has_processor(model_dir) and fallback_processor_dir and has_processor(fallback_processor_dir):
        processor_dir = fallback_processor_dir
    return Generator(model_dir, processor_dir, min_pixels=min_pixels, max_pixels=max_pixels,
                     image_backend=image_backend)
