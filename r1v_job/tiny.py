"""A tiny Qwen2-VL (or Qwen2.5-VL) built offline: random weights, a small byte-level BPE tokenizer.

    python -m r1v_job.tiny --out runs/tiny-qwen2vl [--arch qwen2_5_vl] [--hidden-size 64 --layers 2]

It has the real architecture, processor and chat-template format of Qwen2-VL, so every code path
that runs on Qwen2-VL-2B-Instruct (TRL's GRPOTrainer, generation, the evaluator) runs on it, on a
laptop, with no Hub access. Two details matter for TRL:
- every Qwen special token is an AddedToken, or `<|image_pad|>` is split by BPE and TRL reports an
  image-token mismatch;
- `mrope_section` must sum to head_dim / 2 (the rotary half-dimension is shared by t, h, w).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Qwen2-VL's special tokens, in the order of their ids in the real tokenizer (151643..151656).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The reasoning tags are ordinary (non-special) added tokens: decoded text keeps them, and a tiny
# model learns the format in far fewer steps when each tag is one token.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat-template format: a default system turn, <|im_start|>role ... <|im_end|>, and each
# image as <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad token).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the BPE merges are learned from: the prompts and the answers the models will see.
_CORPUS = [
    "How many items are there in the image?",
    "How many different items are there in the image?",
    "How many objects are there in the image?",
    "Output the thinking process in and final answer (number) in tags.",
    "First output the thinking process in and final answer (number) in tags. Answer:",
    "You are a helpful assistant. system user assistant",
    "I count the objects: cube, sphere, cylinder, cone, torus, small, large, red, blue, green, "
    "yellow, purple, cyan, gray, brown, metal, rubber. There are objects in the scene. So the answer is",
] + [" ".join(str(i) for i in range(n, n + 12)) for n in range(0, 30)]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with every Qwen special token, offline and deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer, arch: str = "qwen2_vl", hidden_size: int = 64, layers: int = 2, heads: int = 4,
                 vision_dim: int = 32, vision_depth: int = 2):
    """A Qwen2-VL / Qwen2.5-VL config whose token ids match `tokenizer`."""
    head_dim = hidden_size // heads
    if head_dim % 4:
        raise ValueError(f"hidden_size/heads = {head_dim} must be a multiple of 4 for mrope")
    half = head_dim // 2
    # t, h, w split of the rotary half-dimension; must sum to head_dim / 2.
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    ]}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(depth=vision_depth, hidden_size=hidden_size, num_heads=2, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision.update(embed_dim=vision_dim, mlp_ratio=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision.update(out_hidden_size=hidden_size, hidden_size=vision_dim, intermediate_size=vision_dim * 2,
                      fullatt_block_indexes=[vision_depth - 1], window_size=56)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    raise ValueError(f"--arch {arch!r}: expected qwen2_vl or qwen2_5_vl")


def build_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 224 * 224):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_model(out: str | Path, arch: str = "qwen2_vl", seed: int = 0, **sizes) -> Path:
    """Write a tiny model, tokenizer and processor to `out`; loadable with AutoProcessor and
    AutoModelForImageTextToText. Returns `out`."""
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, arch=arch, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "tiny_model.json").write_text(json.dumps({"arch": arch, "parameters": n_params, "seed": seed, **sizes}))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the model, tokenizer and processor to")
    parser.add_argument("--arch", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl"])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vision-dim", type=int, default=32)
    parser.add_argument("--vision-depth", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = save_tiny_model(args.out, arch=args.arch, seed=args.seed, hidden_size=args.hidden_size,
                          layers=args.layers, heads=args.heads, vision_dim=args.vision_dim,
                          vision_depth=args.vision_depth)
    print(f"tiny {args.arch} written to {out}")


if __name__ == "__main__":
    main()
