"""GPU-class training options: QLoRA, DoRA, Liger, attention kernels, compile.

Each runs on the CPU where its library allows (bitsandbytes' NF4 and peft's DoRA do); the
rest, and the same options on a real device, are marked `gpu` (run by `make gpu-check`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from freshtune.config import ConfigError, TrainSettings, load_config
from tasks.models import load_causal_lm, load_inference_model, load_tokenizer
from tasks.train import adapter_key, check_adapter_fits, load_training_model, train_adapter
from tests.tasks.test_train import _rows

SMALL = {"epochs": 2, "learning_rate": 5e-3, "batch_size": 4, "max_length": 64}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
cuda = pytest.mark.gpu


def _train(tiny_model: Path, out: Path, **settings) -> Path:
    merged = {**SMALL, "lora": LORA, **settings}
    return train_adapter(str(tiny_model), _rows(), TrainSettings(**merged), out).adapter_dir


def _weights(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter_model.safetensors"))


def test_adapter_keys_of_existing_workspaces_do_not_change():
    # Pinned with the code before quantization, use_dora, liger_kernel and
    # attn_implementation existed: adapters trained then keep their folders.
    assert adapter_key("/models/base", TrainSettings(), "abc123", None, 0, False) == (
        "1d1b9e289a0c1064"
    )
    continued = TrainSettings(epochs=5, lora={"r": 32, "alpha": 64})
    parent = Path("/ws/adapters/p1")
    assert adapter_key("/models/base", continued, "abc123", parent, 0, True) == "2aaa3df67a91978b"


def test_what_changes_the_adapter_keys_it_and_kernels_do_not():
    key = adapter_key("base", TrainSettings(), "mix", None, 0, True)
    for changed in (TrainSettings(quantization="nf4"), TrainSettings(lora={"use_dora": True})):
        assert adapter_key("base", changed, "mix", None, 0, True) != key
    same = TrainSettings(liger_kernel=True, attn_implementation="flex_attention", compile=True)
    assert adapter_key("base", same, "mix", None, 0, True) == key


def test_qlora_with_fsdp_is_refused_naming_the_fields(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"train\.quantization=nf4 with train\.distributed"):
        load_config(
            "tiny",
            ["base_model=/m", "train.quantization=nf4", "train.processes=2",
             "train.distributed=fsdp"],
            tmp_path,
        )  # fmt: skip


def test_qlora_trains_on_a_4bit_base_and_merges_onto_the_full_one(tiny_model: Path, tmp_path: Path):
    import bitsandbytes as bnb
    from peft import PeftModel

    from tasks.export import _merge

    settings = TrainSettings(**SMALL, lora=LORA, quantization="nf4")
    quantized = load_training_model(str(tiny_model), settings)
    layers = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every linear layer of both blocks is held in NF4
    assert layers[0].weight.quant_state.quant_type == "nf4"

    qlora = _train(tiny_model, tmp_path / "qlora", quantization="nf4")
    full = _train(tiny_model, tmp_path / "full")
    a, b = _weights(qlora), _weights(full)
    assert a.keys() == b.keys()
    assert all(w.abs().max() > 0 for k, w in a.items() if "lora_B" in k)
    # Same seed and rows: only the 4-bit base differs, and the adapter learnt against it.
    assert any(not torch.allclose(a[k], b[k], atol=1e-4) for k in a)

    # Served on the unquantised base: every key loads, and the merged checkpoint computes
    # what base + adapter computes.
    peft_model = PeftModel.from_pretrained(load_causal_lm(str(tiny_model)), str(qlora)).eval()
    check_adapter_fits(peft_model, qlora)
    _merge(str(tiny_model), qlora, tmp_path / "merged")
    merged = load_causal_lm(str(tmp_path / "merged")).eval()
    ids = load_tokenizer(str(tiny_model))("How much does plan 3 cost?", return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**ids).logits
        base_logits = load_causal_lm(str(tiny_model))(**ids).logits
        assert torch.allclose(merged(**ids).logits, expected, atol=1e-4)
    assert not torch.allclose(expected, base_logits, atol=1e-3)


def test_dora_learns_a_magnitude_per_output_feature(tiny_model: Path, tmp_path: Path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    dora = _train(tiny_model, tmp_path / "dora", lora={**LORA, "use_dora": True})
    saved = _weights(dora)
    magnitudes = {k: v for k, v in saved.items() if "lora_magnitude_vector" in k}
    assert len(magnitudes) == 2 * 7
    fresh = get_peft_model(
        load_causal_lm(str(tiny_model)),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True),
    )
    initial = get_peft_model_state_dict(fresh)
    # DoRA starts each magnitude at the base weight's row norm; training moved them.
    assert any(not torch.allclose(v, initial[k]) for k, v in magnitudes.items())
    plain = _weights(_train(tiny_model, tmp_path / "lora"))
    assert not any("magnitude" in k for k in plain)


def test_liger_on_a_machine_without_cuda_is_a_clear_error(tiny_model: Path):
    if torch.cuda.is_available():
        pytest.skip("the CPU rule")
    with pytest.raises(ValueError, match=r"train\.liger_kernel needs a CUDA GPU"):
        load_training_model(str(tiny_model), TrainSettings(liger_kernel=True))


def test_an_attention_kernel_named_in_the_config_is_the_one_loaded(tiny_model: Path):
    model = load_training_model(str(tiny_model), TrainSettings(attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    default = load_training_model(str(tiny_model), TrainSettings())
    assert default.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------------------------------------
# On a CUDA device (make gpu-check).


@cuda
def test_gpu_training_is_bf16_with_an_mfu(tiny_model: Path, tmp_path: Path):
    settings = TrainSettings(**SMALL, lora=LORA)
    result = train_adapter(str(tiny_model), _rows(), settings, tmp_path / "a")
    model = load_training_model(str(tiny_model), settings)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert 0 < result.mfu < 1 and result.gpu_hours > 0
    assert all(w.dtype == torch.float32 for w in _weights(result.adapter_dir).values())


@cuda
def test_liger_kernels_train_the_same_function(tiny_model: Path, tmp_path: Path):
    fused = _weights(_train(tiny_model, tmp_path / "liger", liger_kernel=True))
    plain = _weights(_train(tiny_model, tmp_path / "plain"))
    assert fused.keys() == plain.keys()
    for key in fused:  # bf16 kernels differ in rounding, not in what they compute
        assert torch.allclose(fused[key], plain[key], atol=5e-2, rtol=5e-2), key


@cuda
@pytest.mark.parametrize("kernel", ["sdpa", "flex_attention"])
def test_padding_free_batches_give_the_padded_loss_on_gpu(tiny_model: Path, kernel: str):
    from tasks.train import build_dataset, collate, data_collator

    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model), attn_implementation=kernel, device="cuda")
    rows = _rows(4)
    for i, row in enumerate(rows):
        row["messages"][-1]["content"] += " Thanks for asking." * i
    features = build_dataset(tokenizer, rows, max_length=96).to_list()
    flatten, flat = data_collator(model, tokenizer, padding_free=True)
    assert flat
    batches = [flatten(features), collate(tokenizer.pad_token_id)(features)]
    with torch.no_grad():
        flat_loss, padded_loss = (
            model(**{k: v.to("cuda") for k, v in b.items()}).loss for b in batches
        )
    assert torch.allclose(flat_loss, padded_loss, atol=1e-4), (flat_loss, padded_loss)


@cuda
def test_qlora_on_gpu_and_scoring_on_the_unquantised_base(tiny_model: Path, tmp_path: Path):
    from peft import PeftModel

    from tasks.chat import generate_answers

    adapter = _train(tiny_model, tmp_path / "qlora", quantization="nf4")
    model = PeftModel.from_pretrained(load_inference_model(str(tiny_model)), str(adapter))
    check_adapter_fits(model, adapter)
    assert model.device.type == "cuda" and next(model.parameters()).dtype == torch.bfloat16
    cfg = load_config("tiny", [f"base_model={tiny_model}"])
    answers = generate_answers(model, load_tokenizer(str(tiny_model)), _rows(4), cfg.eval)
    assert len(answers) == 4


@cuda
def test_compiled_training_runs_and_commits(tiny_model: Path, tmp_path: Path):
    adapter = _train(tiny_model, tmp_path / "compiled", compile=True)
    assert all(w.abs().max() > 0 for k, w in _weights(adapter).items() if "lora_B" in k)
