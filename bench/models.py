"""The models and images a benchmark runs on, built offline.

- `tiny`: r1v_job.tiny's model (hidden 64, 2 layers), for CPU runs and tests.
- a config JSON (bench/configs/qwen2vl_2b.json: Qwen2-VL-2B-Instruct's published config.json): the
  real architecture with random weights and r1v_job.tiny's offline tokenizer. The vocabulary keeps
  its real size (151936) so the embedding and LM head cost what they cost in the real model; only
  the special-token ids are moved to where the offline tokenizer has them. Sampled ids above the
  tokenizer's ~500 entries decode to nothing, which is harmless here: completion lengths are fixed
  by min_new_tokens = max_new_tokens, not by what the text says.
- a folder: an existing model, used as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from r1v_job.synthetic import write_clevr_train
from r1v_job.tiny import build_processor, build_tokenizer, save_tiny_model

CONFIG_2B = Path(__file__).parent / "configs" / "qwen2vl_2b.json"

# Config fields that name a token: each must point at the same token in the offline tokenizer.
_TOKEN_FIELDS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "vision_token_id": "<|vision_pad|>",
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
}


def random_model_config(config_json: str | Path, tokenizer):
    """The config in `config_json` with its special-token ids taken from `tokenizer`."""
    from transformers import AutoConfig

    fields = json.loads(Path(config_json).read_text())
    fields.update({name: tokenizer.convert_tokens_to_ids(token) for name, token in _TOKEN_FIELDS.items()})
    fields["pad_token_id"] = tokenizer.pad_token_id
    if fields["vocab_size"] < len(tokenizer):
        raise ValueError(f"{config_json}: vocab_size {fields['vocab_size']} < tokenizer size {len(tokenizer)}")
    return AutoConfig.for_model(**fields)


def save_random_model(config_json: str | Path, out: str | Path, dtype: str = "bfloat16", device: str = "cpu",
                      seed: int = 0) -> Path:
    """Random weights for the architecture in `config_json`, with the offline tokenizer and processor."""
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out)
    tokenizer = build_tokenizer()
    config = random_model_config(config_json, tokenizer)
    torch.manual_seed(seed)
    # Initialising 2B parameters on the GPU takes a second; on the CPU it takes most of a minute.
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    del model
    if device == "cuda":  # hand the init copy's memory back before the trainer loads two more
        torch.cuda.empty_cache()
    return out


def prepare_model(spec: str, workdir: Path, device: str = "cpu") -> Path:
    """A model folder for `spec`: "tiny", a config JSON (random weights), or an existing folder."""
    if spec == "tiny":
        out = workdir / "tiny-qwen2vl"
        if not (out / "config.json").exists():
            save_tiny_model(out)
        return out
    path = Path(spec)
    if path.suffix == ".json":
        out = workdir / f"{path.stem}-random"
        if not (out / "config.json").exists():
            save_random_model(path, out, device=device)
        return out
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"--model {spec}: expected 'tiny', a config .json or a model folder")
    return path


def write_scenes(out: Path, n: int, width: int, height: int, seed: int = 0) -> Path:
    """`n` CLEVR-like counting scenes of width x height pixels in the CLEVR-70k schema (reused when
    an earlier run drew at least as many); returns the jsonl."""
    jsonl = out / "train.jsonl"
    if jsonl.exists() and len(jsonl.read_text().splitlines()) >= n:
        return jsonl
    return write_clevr_train(out, n, size=(width, height), seed=seed)
