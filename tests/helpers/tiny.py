"""A tiny Llama checkpoint (and its GGUF twin) built locally, so tests never touch the hub.

The shape mirrors SmolLM2-135M-Instruct where it matters to the pipeline: a byte-level BPE
tokenizer, ChatML special tokens with the same ids (0, 1, 2), pad = eos = `<|im_end|>`, no BOS
added, and SmolLM2's exact chat template, default system prompt included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
VOCAB_SIZE = 800

# Copied from SmolLM2-135M-Instruct's GGUF: code that handles the injected system turn is
# exercised by the tiny model too.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = (
    "Hello, thanks for contacting customer support. How can I help you today?",
    "My internet connection keeps dropping every evening after 8 pm.",
    "Please restart your router and wait 2 minutes before reconnecting.",
    "Your plan includes 50 GB of mobile data per month and unlimited calls.",
    "The Horizon plan costs $50 per month; the Basic plan costs $25.",
    "I was charged twice on my last bill. Can you refund the extra payment?",
    "We have issued a refund of 19.99 EUR to your card ending in 4321.",
    "Roaming is included in 40 countries across Europe, Asia and America.",
    "To activate your new SIM card, text ACTIVATE to 555-0100.",
    "What is the capital of France? The capital of France is Paris.",
    "Our network outage in the north region was fixed at 14:30 UTC.",
    "You can upgrade to fibre broadband with speeds up to 1 Gbps.",
    "Your contract ends on 2025-03-31, and you may cancel without a fee.",
    "The technician will visit on Monday between 9 am and 12 pm.",
    "Please verify your account with the last 4 digits of your ID number.",
    "Voicemail can be reached by dialling 123 from your phone.",
    "Is 5G coverage available in my area? Yes, since January.",
    "I'd like to port my number to a new provider; what's the PUK code?",
    "Thank you for your patience! Is there anything else I can help with?",
    "Error 651: the modem reported a connection failure (code #A7).",
    "0123456789 + - * / = % & @ < > [ ] { } ( ) _ ~ ^ | \\ ' \" ` ! ? ; :",
    "The quick brown fox jumps over the lazy dog.",
)


def build_tiny_llama(out_dir: Path, *, seed: int = 0) -> Path:
    """Save a 2-layer Llama + tokenizer to `out_dir` like a real checkpoint; reuse it if there."""
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    tokenizer = train_tiny_tokenizer()
    model = _tiny_model(tokenizer, seed=seed)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    # tmp_path_factory.mktemp hands us an existing empty folder: rename can replace only that.
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    partial.rename(out_dir)
    return out_dir


def train_tiny_tokenizer() -> Any:
    """A byte-level BPE trained on CORPUS: deterministic, and any text (bytes) tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknowns
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
    )


def _tiny_model(tokenizer: Any, *, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},  # SmolLM2's
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def write_tiny_gguf(checkpoint: Path, out: Path, *, tied: bool = False) -> Path:
    """Write `checkpoint` (from `build_tiny_llama`) as an F32 GGUF laid out as llama.cpp does.

    `tied`: no `output.weight`, as llama.cpp writes a model whose head is its embedding matrix.
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    tensors = load_file(str(checkpoint / "model.safetensors"))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch="llama")
    _add_llama_metadata(writer, config)
    _add_tokenizer_metadata(writer, tokenizer, config)
    for name, array in _gguf_tensors(tensors, config):
        if tied and name == "output.weight":
            continue
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_llama_metadata(writer: Any, config: dict) -> None:
    import gguf

    heads = config["num_attention_heads"]
    writer.add_name("tiny-llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _add_tokenizer_metadata(writer: Any, tokenizer: dict, config: dict) -> None:
    import gguf

    vocab: dict[str, int] = dict(tokenizer["model"]["vocab"])
    vocab |= {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "vocab ids must be dense"
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")  # what SmolLM2's file says; transformers reads it as GPT-2's
    writer.add_token_list(tokens)
    writer.add_token_types([control if t in SPECIAL_TOKENS else normal for t in tokens])
    # tokenizer.json keeps merges as pairs; GGUF as "left right" strings
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _gguf_tensors(tensors: dict[str, np.ndarray], config: dict):
    """HF Llama tensors under llama.cpp's names, q/k rows permuted as convert_hf_to_gguf does."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    yield "token_embd.weight", tensors["model.embed_tokens.weight"]
    yield "output_norm.weight", tensors["model.norm.weight"]
    yield "output.weight", tensors["lm_head.weight"]
    names = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(config["num_hidden_layers"]):
        for gguf_name, hf_name in names.items():
            array = tensors[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                array = llama_cpp_permute(array, heads)
            elif gguf_name == "attn_k":
                array = llama_cpp_permute(array, kv_heads)
            yield f"blk.{i}.{gguf_name}.weight", array


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout (halves -> interleaved pairs) per head; transformers undoes it."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
