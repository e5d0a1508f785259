"""Randomly initialised models of real shapes, for speed measurements: weights do not change
how fast a step runs, so nothing is downloaded. Built from a config beside a real tokenizer
and saved once as a normal checkpoint (bf16 safetensors) that every contender loads.

Run: python bench/random_models.py llama-1b --tokenizer .freshtune/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Llama-architecture shapes. smollm2-135m is SmolLM2-135M's; llama-1b is Llama-3.2-1B's body
# (16 layers of width 2048, GQA 32/8 heads, MLP 8192) over the tokenizer's vocabulary.
SPECS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "rope_theta": 100000.0,
    },
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
    },
    "tiny": {  # for tests of this module
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
    },
}


def build_random_model(spec: str, tokenizer_dir: Path, cache: Path, seed: int = 0) -> Path:
    """`cache/random-<spec>-v<vocab>`: a checkpoint of that shape with random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if spec not in SPECS:
        raise SystemExit(f"unknown model spec {spec!r}; known: {', '.join(SPECS)}")
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise SystemExit(
            f"no tokenizer at {tokenizer_dir}: run `freshtune models fetch smollm2` once, or "
            "pass --tokenizer with a checkpoint folder"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out = cache / f"random-{spec}-v{len(tokenizer)}"
    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SPECS[spec],
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", choices=sorted(SPECS))
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    print(build_random_model(args.spec, args.tokenizer, args.out))
