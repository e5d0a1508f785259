"""LoRA training with the transformers Trainer, warm-started from the champion adapter.

The output folder is a pure function of the inputs (base, train settings, mix, parent), so a
rerun after a crash finds the committed adapter and returns it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import FreshtuneConfig, TrainSettings
from freshtune.errors import AdapterMismatch
from tasks.mix import TrainingMix
from tasks.registry import Champion

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    parent_dir: Path | None
    steps: int
    tokens: int
    loss: float
    wall_s: float
    flops: float

    def metrics(self) -> dict[str, float]:
        return {
            "train_steps": self.steps,
            "train_tokens": self.tokens,
            "train_loss": self.loss,
            "train_wall_s": self.wall_s,
            "train_flops": self.flops,
            "train_tokens_per_s": self.tokens / max(self.wall_s, 1e-9),
        }


def adapter_key(
    base: str, settings: TrainSettings, mix_digest: str, parent: Path | None, seed: int
) -> str:
    blob = json.dumps(
        [base, settings.model_dump(mode="json"), mix_digest, parent.name if parent else None, seed],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict:
    """Token ids and labels that train only on assistant turns.

    Each piece is tokenised on its own, exactly as generation will see the prompt, so the
    boundary between prompt and answer never merges into one token.
    """
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prefix = _template(tokenizer, messages[:i], generation_prompt=True)
            _append(tokenizer, prefix[len(done) :], ids, labels, train=False)
            done = prefix
        text = _template(tokenizer, messages[: i + 1])
        if not text.startswith(done):
            raise ValueError("the chat template is not prefix-consistent; cannot mask prompts")
        _append(tokenizer, text[len(done) :], ids, labels, train=message["role"] == "assistant")
        done = text
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _template(tokenizer: Any, messages: list[dict[str, str]], generation_prompt=False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _append(tokenizer: Any, text: str, ids: list[int], labels: list[int], train: bool) -> None:
    piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    ids += piece
    labels += piece if train else [IGNORE] * len(piece)


def collate(pad_id: int) -> Callable[[list[dict]], dict]:
    """Right-pad a batch to its longest row; padding is masked out of the loss."""
    import torch

    def _collate(batch: list[dict]) -> dict:
        width = max(len(row["input_ids"]) for row in batch)
        pad = [width - len(row["input_ids"]) for row in batch]
        return {
            "input_ids": torch.tensor([r["input_ids"] + [pad_id] * p for r, p in zip(batch, pad)]),
            "labels": torch.tensor([r["labels"] + [IGNORE] * p for r, p in zip(batch, pad)]),
            "attention_mask": torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * p for r, p in zip(batch, pad)]
            ),
        }

    return _collate


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int):
    from datasets import Dataset

    encoded = [encode_chat(tokenizer, row["messages"], max_length) for row in rows]
    encoded = [e for e in encoded if any(label != IGNORE for label in e["labels"])]
    return Dataset.from_list([{**e, "length": len(e["input_ids"])} for e in encoded])


def attach_adapter(model: Any, settings: TrainSettings, parent: Path | None) -> Any:
    """A fresh LoRA adapter from the config, or the parent adapter loaded as trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if parent is None:
        lora = settings.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
    peft_model = PeftModel.from_pretrained(model, str(parent), is_trainable=True)
    check_adapter_fits(peft_model, parent)
    return peft_model


def check_adapter_fits(model: Any, adapter_dir: Path, adapter_name: str = "default") -> None:
    """peft only warns about missing keys; an adapter that loaded partly is an error here."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    expected = set(get_peft_model_state_dict(model, adapter_name=adapter_name))
    if saved != expected:
        missing, extra = sorted(expected - saved), sorted(saved - expected)
        raise AdapterMismatch(
            f"adapter {adapter_dir} does not fit the base model: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(extra)} unexpected keys (e.g. {extra[:3]})"
        )


def pick_precision(dtype: str) -> dict[str, bool]:
    import torch

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported() and dtype in ("auto", "bfloat16")
    return {"use_cpu": not on_gpu, "bf16": bf16, "tf32": on_gpu and dtype == "auto"}


def train_adapter(
    base_model: str,
    rows: list[dict[str, Any]],
    settings: TrainSettings,
    out_dir: Path,
    parent: Path | None = None,
    seed: int = 0,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    extra_files: dict[str, str] | None = None,
) -> TrainResult:
    """Train (or find already trained) the adapter at `out_dir`; commit by rename."""
    if (out_dir / "train_result.json").exists():
        log.info("adapter %s already trained; reusing it", out_dir)
        return _load_result(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    model, steps, tokens, loss = _fit(base_model, rows, settings, parent, seed, staging, on_log)
    wall = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.get_base_model().parameters())
    result = TrainResult(out_dir, parent, steps, tokens, loss, wall, 4.0 * n_params * tokens)
    model.save_pretrained(str(staging))
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text, encoding="utf-8")
    _save_result(staging, result)
    staging.rename(out_dir)
    log.info(
        "trained %s: %d steps, %d tokens, loss %.4f, %.0f tokens/s",
        out_dir.name,
        steps,
        tokens,
        loss,
        tokens / max(wall, 1e-9),
    )
    return result


def _fit(base_model, rows, settings, parent, seed, staging, on_log):
    from transformers import Trainer, TrainingArguments, set_seed

    from tasks.models import load_causal_lm, load_tokenizer

    set_seed(seed)
    tokenizer = load_tokenizer(base_model)
    dataset = build_dataset(tokenizer, rows, settings.max_length)
    model = attach_adapter(load_causal_lm(base_model), settings, parent)
    args = TrainingArguments(
        output_dir=str(staging / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup,
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **pick_precision(settings.dtype),
    )
    callbacks = [_metrics_callback(on_log)] if on_log else []
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        callbacks=callbacks,
        data_collator=collate(tokenizer.pad_token_id),
    )
    output = trainer.train()
    tokens = int(sum(dataset["length"]) * settings.epochs)
    return model, output.global_step, tokens, float(output.training_loss)


def _metrics_callback(sink: Callable[[dict[str, float], int], None]) -> Any:
    """Forwards the Trainer's log lines (loss, learning rate) to a tracking sink."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            sink(numeric, state.global_step)

    return MetricsCallback()


def _save_result(folder: Path, result: TrainResult) -> None:
    data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    (folder / "train_result.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def _load_result(folder: Path) -> TrainResult:
    data = json.loads((folder / "train_result.json").read_text(encoding="utf-8"))
    parent = Path(data["parent_dir"]) if data["parent_dir"] else None
    return TrainResult(
        folder, parent, data["steps"], data["tokens"], data["loss"], data["wall_s"], data["flops"]
    )


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_candidate(
    mix: TrainingMix, champion: Champion | None, cfg: FreshtuneConfig, run_id: str
) -> TrainResult:
    """LoRA-train from the champion adapter (from the base when there is none)."""
    from tasks import registry

    base = cfg.resolved_base_model()
    parent = champion.adapter_dir if champion else None
    key = adapter_key(base, cfg.train, mix.digest, parent, cfg.seed)
    result = train_adapter(
        base,
        mix.rows,
        cfg.train,
        cfg.paths.adapters / key,
        parent=parent,
        seed=cfg.seed,
        extra_files={"mix.json": json.dumps(mix.manifest(), indent=1)},
        on_log=lambda metrics, step: registry.log_metrics(
            cfg, run_id, {f"step_{k}": v for k, v in metrics.items()}, step
        ),
    )
    registry.log_metrics(cfg, run_id, result.metrics())
    return result
