"""LoRA training with the transformers Trainer, warm-started from the champion adapter.

The output folder is a pure function of the inputs (base, train settings, mix, parent), so a
rerun after a crash finds the committed adapter and returns it instead of training again. Until
the commit (a rename), work lives in `<out>.partial/`; with `train.save_steps` its complete
checkpoints survive a killed process and the next run resumes from the last one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import console, faults
from freshtune.config import FreshtuneConfig, TrainSettings
from freshtune.errors import AdapterMismatch
from tasks.chat import IGNORE, collate, encode_chat, system_turn
from tasks.mix import TrainingMix, cycle_plan, load_mix, replayed, save_mix
from tasks.registry import Champion
from tasks.stepmetrics import StepMetrics
from tasks.target import (
    build_probe,
    hold_out_wordings,
    recall_curve,
    stop_reason,
    target_callback,
)

log = logging.getLogger(__name__)
_FITTING = threading.Lock()

TRAIN_FLOW = "train-on-gpu"  # the flow in flows/train.py; its deployment is named after the pool
# Settings that change where or how fast a run goes, never the adapter it produces.
RUNTIME_ONLY = (
    "save_steps",
    "logging_steps",
    "gpu_hour_price",
    "work_pool",
    "dispatch_attempts",
    "compile",
    "liger_kernel",  # the same function, fused
    "attn_implementation",  # the same function, another kernel
    "share_prompt_prefix",  # the same loss and gradients, summed in another order
)
# Settings a key holds in another form: the replayed rows (mix digest), the epochs and
# learning rate a cycle resolves them to (TrainSettings.for_cycle).
KEYED_ELSEWHERE = (
    "replay_ratio",
    "made_replay_share",  # the made rows replayed are in the mix digest
    "replay_age_decay",
    "replay_pool_share",
    "rehearsal_ratio",  # the rehearsal rows are in the mix digest
    "continue_rehearsal_ratio",
    "rehearsal_file",
    "rehearsal_max_tokens",
    "continue_epochs",
    "continue_learning_rate",
    "max_epochs",  # resolved into epochs with a target
)
# Fields added after adapters were first keyed: at these values a key leaves them out, so
# adapters trained before they existed keep their keys.
KEYED_WHEN_SET = {
    "quantization": "none",
    "target_recall": None,
    "target_sample": 32,
    "target_replay_sample": 0,
    "target_min_epochs": 1.0,
    "target_held_out": False,
    "asker_share": 0.0,  # changes rows' words, not their ids: not in the mix digest
    "base_kl": 0.0,
}
LORA_KEYED_WHEN_SET = {"use_dora": False}
# What a checkpoint needs before a resume may trust it; trainer_state.json is written last.
CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
Sink = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    parent_dir: Path | None
    steps: int
    tokens: int
    loss: float
    wall_s: float
    flops: float
    gpu_hours: float = 0.0
    cost: float = 0.0
    mfu: float = math.nan  # on GPU only: achieved FLOP/s over the measured bf16 matmul peak
    resumed_step: int = 0
    mode: str = "incremental"
    epochs: float = math.nan  # trained, which a target may have cut short
    recall_curve: tuple[tuple[float, float], ...] = ()  # (epoch, recall) with a target
    stop_reason: str = "fixed epochs"

    def metrics(self) -> dict[str, float]:
        recall = self.recall_curve[-1][1] if self.recall_curve else math.nan
        return {
            "train_epochs": self.epochs,
            "train_target_recall": recall,
            "train_steps": self.steps,
            "train_tokens": self.tokens,
            "train_loss": self.loss,
            "train_wall_s": self.wall_s,
            "train_flops": self.flops,
            "train_tokens_per_s": self.tokens / max(self.wall_s, 1e-9),
            "train_gpu_hours": self.gpu_hours,
            "train_cost": self.cost,
            "train_mfu": self.mfu,
            "train_resumed_step": self.resumed_step,
        }


@dataclass(frozen=True)
class FitStats:
    """What one training process reports back (also across a torchrun launch, as JSON)."""

    steps: int
    tokens: int
    loss: float
    flops_per_token: float
    resumed_step: int
    on_gpu: bool
    peak_flops: float
    epochs: float = math.nan
    recall_curve: tuple[tuple[float, float], ...] = ()
    stop_reason: str = "fixed epochs"


def adapter_key(
    base: str,
    settings: TrainSettings,
    mix_digest: str,
    parent: Path | None,
    seed: int,
    replays: bool,
) -> str:
    """Keyed by what is trained (`TrainSettings.for_cycle`), so settings that would train the
    same adapter (a cumulative mix under `replay_passes`, month 1 under `replay_ratio`) share it."""
    settings = settings.for_cycle(parent is not None, replays)
    kept = settings.model_dump(mode="json", exclude={*RUNTIME_ONLY, *KEYED_ELSEWHERE})
    _drop_defaults(kept, KEYED_WHEN_SET)
    _drop_defaults(kept["lora"], LORA_KEYED_WHEN_SET)
    blob = json.dumps(
        [base, kept, mix_digest, parent.name if parent else None, seed], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _drop_defaults(dumped: dict[str, Any], defaults: dict[str, Any]) -> None:
    for name, default in defaults.items():
        if dumped.get(name) == default:
            dumped.pop(name, None)


def build_dataset(
    tokenizer: Any, rows: list[dict[str, Any]], max_length: int, by_system_turn: bool = False
):
    """Rows encoded for the Trainer, with their `length`; `by_system_turn` adds `system_turn`,
    the rank of the row's system turn, for `turn_grouped_indices`."""
    from datasets import Dataset

    encoded = []
    for row in rows:
        e = encode_chat(tokenizer, row["messages"], max_length, open_end=bool(row.get("open")))
        encoded.append({**e, "length": len(e["input_ids"])})
    if by_system_turn:
        rank = {turn: i for i, turn in enumerate(sorted({system_turn(r) for r in rows}))}
        for e, row in zip(encoded, rows, strict=True):
            e["system_turn"] = rank[system_turn(row)]
    return Dataset.from_list([e for e in encoded if any(x != IGNORE for x in e["labels"])])


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
            use_dora=lora.use_dora,
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


def merged_with(model: Any, adapter_dir: Path) -> Any:
    """`model` with the adapter merged into its weights, after checking that it fits.

    What `export --merged` serves, and what evaluation scores: generating through a merged
    model costs what the base's generation does, where an adapter applied on the fly adds
    small matmuls to every adapted layer at every step (bench/eval_speed.py)."""
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(adapter_dir))
    check_adapter_fits(adapted, Path(adapter_dir))
    return adapted.merge_and_unload()


def pick_precision(dtype: str) -> dict[str, bool]:
    """`auto`: bf16 and TF32 on GPUs that have them, fp32 on CPU (issue 7 saw TRL's bf16
    defaults at about 5 tokens/s against 110 for a plain fp32 loop on AVX2 cores). An explicit
    `bfloat16` is honoured on CPU too: AVX512-BF16 cores train faster in it."""
    import torch

    on_gpu = torch.cuda.is_available()
    auto_bf16 = on_gpu and torch.cuda.is_bf16_supported() and dtype == "auto"
    bf16 = dtype == "bfloat16" or auto_bf16
    return {"use_cpu": not on_gpu, "bf16": bf16, "tf32": on_gpu and dtype == "auto"}


def supports_flattening(model: Any) -> bool:
    """Padding-free batches need attention that reads sequence boundaries from position_ids."""
    impl = getattr(model.config, "_attn_implementation", None)
    return impl in {"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"}


def data_collator(
    model: Any,
    tokenizer: Any,
    padding_free: bool,
    all_logits: bool = False,
    share_prefix: bool = False,
) -> tuple[Any, bool]:
    """Flatten each batch into one row when the model can; else right-pad (length-grouped).
    Logits are computed only where labels are trained unless `all_logits` (train.base_kl
    compares every untaught position with the base); with `share_prefix` a padded batch
    says how many leading tokens all its rows share (`shared_prefix`, for `cycle_trainer`)."""
    from transformers import DataCollatorWithFlattening

    keeps = not all_logits and _keeps_logits(model)
    if padding_free and supports_flattening(model):
        # With a KV cache (config.use_cache, on by default even in training) transformers
        # skips the packed-sequence mask and flattened rows silently attend to each other.
        model.config.use_cache = False
        flash = model.config._attn_implementation.startswith("flash_attention")
        flatten = DataCollatorWithFlattening(separator_id=IGNORE, return_flash_attn_kwargs=flash)
        return (logits_where_trained(flatten) if keeps else flatten), True
    padded = collate(tokenizer.pad_token_id)
    return (logits_from_first_trained(padded, share_prefix) if keeps else padded), False


def cycle_collator(
    model: Any, tokenizer: Any, settings: TrainSettings, all_logits: bool = False
) -> tuple[Any, bool, bool]:
    """`data_collator` as a cycle's settings ask for it, whether it flattens and whether it
    shares a batch's prompt prefix."""
    # Liger's fused loss on padded batches was measured with every position (docs/gpu.md).
    liger_padded = settings.liger_kernel and not settings.padding_free
    every = all_logits or bool(settings.base_kl) or liger_padded
    share = not every and settings.share_prompt_prefix
    return *data_collator(model, tokenizer, settings.padding_free, every, share), share


def logits_where_trained(flatten: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Ask the model for logits only where a label is trained (the assistant's tokens).

    The vocabulary projection and softmax are about a fifth of a small model's FLOPs; prompts
    are most of a chat row's tokens and carry no loss, so their logits are pure waste.
    """

    def _collate(batch: list[dict]) -> dict:
        out = flatten(batch)
        shifted = out["labels"][0, 1:]
        keep = (shifted != IGNORE).nonzero().squeeze(-1)
        return {**out, "logits_to_keep": keep, "shift_labels": shifted[keep].unsqueeze(0)}

    return _collate


def logits_from_first_trained(
    pad: Callable[[list[dict]], dict], share_prefix: bool = False
) -> Callable[[list[dict]], dict]:
    """Padded batches: logits from the first position any row trains to the end. A chat row's
    prompt comes first and carries no loss; `logits_to_keep` keeps a batch's last positions,
    so the prompts' shared beginning is skipped (1.27x the tokens/s on 2 AVX2 cores,
    bench/train_throughput.py freshtune-all-logits; the same loss and gradients)."""
    import torch

    def _collate(batch: list[dict]) -> dict:
        out = pad(batch)
        shifted = out["labels"][:, 1:]  # position p predicts label p + 1
        trained = (shifted != IGNORE).any(dim=0).nonzero()
        if not len(trained):
            return out
        first = int(trained[0])
        last = torch.full((shifted.shape[0], 1), IGNORE)  # the last position predicts nothing
        shift_labels = torch.cat([shifted[:, first:], last], dim=1)
        out = {**out, "logits_to_keep": shift_labels.shape[1], "shift_labels": shift_labels}
        if share_prefix and (length := shared_columns(out, first)):
            out["shared_prefix"] = length
        return out

    return _collate


def shared_columns(batch: dict[str, Any], limit: int) -> int:
    """How many leading tokens every row of a padded batch has in common, at most `limit`
    (the first position whose logits are kept); 0 when there is nothing to share."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    same = ((ids == ids[:1]) & mask.bool()).all(dim=0)
    differs = (~same).nonzero()
    length = min(int(differs[0]) if len(differs) else ids.shape[1], limit)
    return length if ids.shape[0] > 1 and length > 0 else 0


def _keeps_logits(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints a resume can trust, oldest first; a killed save leaves files missing."""
    found = []
    for path in folder.glob("checkpoint-*"):
        state = path / "trainer_state.json"
        if not state.is_file() or not all((path / f).is_file() for f in CHECKPOINT_FILES):
            continue
        if not list(path.glob("rng_state*.pth")):
            continue
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except ValueError:
            continue
        found.append(path)
    return sorted(found, key=lambda p: int(p.name.rpartition("-")[2]))


@dataclass(frozen=True)
class CheckpointMirror:
    """The checkpoints of one adapter in the artifact store: each uploaded as the Trainer
    writes it, so a run killed on one worker resumes on another with an empty workspace."""

    cfg: FreshtuneConfig
    adapter: str  # the adapter's key

    def _keys(self) -> list[str]:
        from tasks import store

        found = store.keys(self.cfg, store.CHECKPOINTS)
        return sorted(k for k in found if k.rpartition("-")[0] == self.adapter)

    def upload(self, checkpoint: Path) -> None:
        """Put the newest checkpoint, then drop the older ones: the last complete one stays."""
        from tasks import store

        key = f"{self.adapter}-{int(checkpoint.name.rpartition('-')[2]):09d}"
        try:
            store.put(self.cfg, store.CHECKPOINTS, key, checkpoint)
            for older in self._keys():
                if older < key:
                    store.delete(self.cfg, store.CHECKPOINTS, older)
        except store.StoreError as exc:  # training goes on; its end needs the store anyway
            log.warning("checkpoint %s kept on this worker only: %s", checkpoint.name, exc)

    def restore(self, checkpoints: Path, local: Path | None) -> Path | None:
        """The checkpoint to resume from: the stored one when it is further than `local`."""
        from tasks import store

        keys = self._keys()
        step = int(keys[-1].rpartition("-")[2]) if keys else 0
        if step <= (int(local.name.rpartition("-")[2]) if local else 0):
            return local
        target = checkpoints / f"checkpoint-{step}"
        store.get(self.cfg, store.CHECKPOINTS, keys[-1], target)
        log.info("resuming from checkpoint %d fetched from the artifact store", step)
        return target

    def clear(self) -> None:
        from tasks import store

        for key in self._keys():
            store.delete(self.cfg, store.CHECKPOINTS, key)

    def job(self) -> dict[str, Any]:
        """What a torchrun rank needs to rebuild the mirror: where the store is, no secrets."""
        tracking = self.cfg.tracking.model_dump(mode="json")
        where = {"base_model": self.cfg.base_model, "workspace": str(self.cfg.paths.root)}
        return {"config": {**where, "tracking": tracking}, "adapter": self.adapter}

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> CheckpointMirror:
        return cls(FreshtuneConfig.model_validate(job["config"]), job["adapter"])


def _mirror_callback(mirror: CheckpointMirror) -> Any:
    from transformers import TrainerCallback

    class Mirror(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                mirror.upload(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return Mirror()


def prepare_staging(staging: Path) -> Path | None:
    """Keep only complete checkpoints from a crashed run; return the last one to resume from."""
    checkpoints = staging / "checkpoints"
    keep = complete_checkpoints(checkpoints)
    if staging.exists():
        for path in staging.iterdir():
            if path != checkpoints:
                _remove(path)
    if checkpoints.exists():
        for path in checkpoints.iterdir():
            if path not in keep:
                log.warning("skipping incomplete checkpoint %s", path)
                _remove(path)
    staging.mkdir(parents=True, exist_ok=True)
    return keep[-1] if keep else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def train_adapter(
    base_model: str,
    rows: list[dict[str, Any]],
    settings: TrainSettings,
    out_dir: Path,
    parent: Path | None = None,
    seed: int = 0,
    on_log: Sink | None = None,
    extra_files: dict[str, str] | None = None,
    mirror: CheckpointMirror | None = None,
) -> TrainResult:
    """Train (or find already trained) the adapter at `out_dir`; commit by rename. With a
    `mirror`, checkpoints also go to (and resume from) the artifact store."""
    if (out_dir / "train_result.json").exists():
        log.info("adapter %s already trained; reusing it", out_dir)
        return _load_result(out_dir)
    settings = settings.for_cycle(parent is not None, bool(replayed(rows)))
    staging = out_dir.with_name(out_dir.name + ".partial")
    resume = prepare_staging(staging)
    if mirror is not None and settings.save_steps:
        resume = mirror.restore(staging / "checkpoints", resume)
    start = time.perf_counter()
    try:
        if settings.processes > 1:
            stats = launch_torchrun(
                base_model, rows, settings, parent, seed, staging, resume, on_log, mirror
            )
        else:
            with one_fit_at_a_time(out_dir.name):
                stats = fit_adapter(
                    base_model, rows, settings, parent, seed, staging, resume, on_log, mirror
                )
    except TrainingDiverged:
        # Its checkpoints may hold the poisoned weights: a rerun must not resume from them.
        shutil.rmtree(staging, ignore_errors=True)
        if mirror is not None:
            mirror.clear()
        raise
    except Exception as exc:
        # safetensors and torch report a full disk in their own error types.
        if "No space left on device" not in str(exc) or isinstance(exc, OSError):
            raise
        raise OSError(errno.ENOSPC, f"No space left on device writing {staging}: {exc}") from None
    result = _result(out_dir, parent, settings, stats, time.perf_counter() - start)
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text, encoding="utf-8")
    _save_result(staging, result)
    staging.rename(out_dir)
    log.info(
        "trained %s: %d steps, %d tokens, loss %.4f, %.0f tokens/s",
        out_dir.name,
        result.steps,
        result.tokens,
        result.loss,
        result.tokens / max(result.wall_s, 1e-9),
    )
    return result


def _result(out_dir, parent, settings, stats: FitStats, wall: float) -> TrainResult:
    flops = stats.flops_per_token * stats.tokens
    gpu_hours = wall * settings.processes / 3600 if stats.on_gpu else 0.0
    mfu = flops / wall / (stats.peak_flops * settings.processes) if stats.on_gpu else math.nan
    return TrainResult(
        out_dir,
        parent,
        stats.steps,
        stats.tokens,
        stats.loss,
        wall,
        flops,
        gpu_hours,
        gpu_hours * settings.gpu_hour_price,
        mfu,
        stats.resumed_step,
        settings.mode,
        stats.epochs,
        tuple(tuple(point) for point in stats.recall_curve),
        stats.stop_reason,
    )


def cycle_dataset(
    tokenizer: Any,
    rows: list[dict[str, Any]],
    settings: TrainSettings,
    seed: int,
    flat: bool,
    share: bool = False,
) -> tuple[Any, TrainSettings, str]:
    """The tokenised rows, the settings the Trainer runs with and its sampling strategy:
    length-grouped (of one system turn each where the dataset has `system_turn`: the cycle's
    Trainer samples those itself).

    With `train.replay_passes` the cycle is planned row by row (tasks.mix.cycle_plan) and the
    Trainer makes one sequential pass over the plan, which already holds every epoch.
    """
    batch = 0 if flat else settings.batch_size * settings.grad_accum
    plan = cycle_plan(rows, settings.epochs, settings.replay_passes, seed, batch)
    if plan is None:
        dataset = build_dataset(tokenizer, rows, settings.max_length, by_system_turn=share)
        return dataset, settings, "random" if flat else "group_by_length"
    once = settings.model_copy(update={"epochs": 1.0})
    return build_dataset(tokenizer, plan, settings.max_length), once, "sequential"


@contextmanager
def one_fit_at_a_time(name: str) -> Iterator[None]:
    """Trainings in one process (two cycles run as threads) take turns: transformers keeps one
    accelerate state per process and every TrainingArguments resets it, so a Trainer built
    while another trains breaks that one (CI: "`AcceleratorState` object has no attribute
    `num_processes`"); `set_seed` is process-wide too."""
    if not _FITTING.acquire(blocking=False):
        log.info("adapter %s waits for this process's other training to finish", name)
        _FITTING.acquire()
    try:
        yield
    finally:
        _FITTING.release()


def fit_adapter(
    base_model: str,
    rows: list[dict[str, Any]],
    settings: TrainSettings,
    parent: Path | None,
    seed: int,
    staging: Path,
    resume: Path | None = None,
    on_log: Sink | None = None,
    mirror: CheckpointMirror | None = None,
    all_logits: bool = False,
) -> FitStats:
    """Run the Trainer (this process's share under torchrun); the main process saves the
    adapter into `staging`. `all_logits`: logits at every position of a padded batch and no
    shared prefix, as before either saving (bench/train_throughput.py's peer)."""
    from transformers import set_seed

    from tasks.models import load_tokenizer
    from tasks.throughput import flops_per_token

    set_seed(seed)
    tokenizer = load_tokenizer(base_model)
    model = attach_adapter(load_training_model(base_model, settings), settings, parent)
    collator, flat, share = cycle_collator(model, tokenizer, settings, all_logits)
    rows, held_out = hold_out_wordings(rows, settings, seed)
    dataset, run_settings, sampling = cycle_dataset(tokenizer, rows, settings, seed, flat, share)
    args = training_args(run_settings, staging / "checkpoints", seed, sampling, flat)
    peak = math.nan if args.use_cpu else _gpu_peak()
    accounting = Accounting(flops_per_token(model), peak, settings, args.use_cpu)
    probe = build_probe(rows, settings, seed, held_out)
    callbacks = [_metrics_callback(accounting, on_log), _divergence_guard()]
    if mirror is not None and settings.save_steps:
        callbacks.append(_mirror_callback(mirror))
    callbacks += _injected_faults()
    if probe is not None:
        callbacks.append(target_callback(probe, load_tokenizer(base_model), on_log))
    trainer = cycle_trainer(settings)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=callbacks,
    )
    if console.quiet():  # one bar with tokens/s instead of the bar and its per-step dicts
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_token_bar())
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    check_finite(model, float(output.training_loss), output.global_step)
    trainer.save_model(str(staging))
    (staging / "training_args.bin").unlink(missing_ok=True)
    done = output.global_step / max(trainer.state.max_steps, 1)  # < 1 when a target stopped it
    tokens = int(sum(dataset["length"]) * run_settings.epochs * done)
    resumed = int(resume.name.rpartition("-")[2]) if resume else 0
    curve = recall_curve(trainer.state.log_history)
    return FitStats(
        output.global_step,
        tokens,
        float(output.training_loss),
        accounting.per_token,
        resumed,
        not args.use_cpu,
        peak,
        round(settings.epochs * done, 2),
        tuple(curve),
        stop_reason(curve, probe),
    )


def cycle_trainer(settings: TrainSettings) -> Any:
    """The Trainer class a cycle runs: anchored to the base with train.base_kl, else one that
    computes a batch's shared prompt prefix once when its collator says it may."""
    from transformers import Trainer

    if settings.base_kl:
        return anchored_trainer(settings.base_kl)

    class PrefixSharingTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if "system_turn" not in getattr(dataset, "column_names", ()):
                return super()._get_train_sampler(train_dataset)
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return TurnGroupedSampler(dataset["system_turn"], dataset["length"], batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if length := inputs.pop("shared_prefix", 0):
                inputs = after_prefix(model, inputs, length)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return PrefixSharingTrainer


class TurnGroupedSampler:
    """Each epoch's order from `turn_grouped_indices` (a torch Sampler by duck typing: the
    Trainer asks for `__iter__` and `__len__`)."""

    def __init__(self, turns: list[int], lengths: list[int], batch: int) -> None:
        self.turns, self.lengths, self.batch = turns, lengths, batch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(turn_grouped_indices(self.turns, self.lengths, self.batch))


def turn_grouped_indices(turns: list[int], lengths: list[int], batch: int) -> list[int]:
    """Batches of one system turn and like lengths, in random order, so the turns mix over
    the epoch as before grouping: transformers' length grouping within each turn, cut into
    batches. The rows a turn leaves over (under a batch) fill the last batches, one turn
    after the other: the data loader cuts the epoch's one short batch at the end. The longest
    whole batch goes first, as in transformers, so one too big for memory fails at once.
    Draws from torch's generator (seeded by the Trainer)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    whole, spare = [], []
    for turn in sorted(set(turns)):
        mine = [i for i, t in enumerate(turns) if t == turn]
        order = get_length_grouped_indices([lengths[i] for i in mine], batch)
        for start in range(0, len(order), batch):
            rows = [mine[k] for k in order[start : start + batch]]
            (whole if len(rows) == batch else spare).append(rows)
    whole = [whole[i] for i in torch.randperm(len(whole)).tolist()]
    if whole:
        longest = max(range(len(whole)), key=lambda b: max(lengths[i] for i in whole[b]))
        whole[0], whole[longest] = whole[longest], whole[0]
    return [i for rows in whole + spare for i in rows]


def after_prefix(model: Any, inputs: dict[str, Any], length: int) -> dict[str, Any]:
    """The batch past its rows' shared first `length` tokens, with their keys and values
    computed for one row and repeated for every row: each row attends to them as in a full
    pass, and their gradients sum over the rows through the repeat. Positions and the
    attention mask (over the whole row) follow from the cache's length."""
    ids = inputs["input_ids"]
    cache = model(input_ids=ids[:1, :length], use_cache=True, logits_to_keep=1).cache
    cache.batch_repeat_interleave(ids.shape[0])
    return {**inputs, "input_ids": ids[:, length:], "cache": cache, "use_cache": True}


def anchored_trainer(weight: float) -> Any:
    """A Trainer whose loss adds `weight` x the divergence from the base (`base_divergence`)."""
    from transformers import Trainer

    class AnchoredTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            divergence = base_divergence(self.accelerator.unwrap_model(model), inputs, outputs)
            if num_items_in_batch is not None:  # the task loss is already a share of the step
                divergence = divergence / self.args.gradient_accumulation_steps
            loss = loss + weight * divergence
            return (loss, outputs) if return_outputs else loss

    return AnchoredTrainer


def base_divergence(model: Any, inputs: dict[str, Any], outputs: Any) -> Any:
    """KL(base || adapter) of the next-token distributions, averaged over the tokens the
    cycle does not teach (label IGNORE, not padding): where only the base's behaviour should
    be kept."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    untaught = inputs["labels"][:, 1:] == IGNORE
    if (mask := inputs.get("attention_mask")) is not None:
        untaught = untaught & mask[:, 1:].bool()
    teacher = F.log_softmax(base.logits[:, :-1].float(), dim=-1)
    student = F.log_softmax(outputs.logits[:, :-1].float(), dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=-1)
    return (kl * untaught).sum() / untaught.sum().clamp(min=1)


def load_training_model(base_model: str, settings: TrainSettings) -> Any:
    """The frozen base as a cycle trains on it: 4-bit NF4 under QLoRA; bf16 weights on a GPU
    that computes in bf16 (half the memory, no per-step casts; peft keeps the adapter in
    float32); float32 on the CPU, where an explicit bfloat16 autocasts instead."""
    from tasks.models import load_causal_lm

    precision = pick_precision(settings.dtype)
    on_gpu = not precision["use_cpu"]
    if settings.liger_kernel:
        _check_liger(on_gpu)
    half = precision["bf16"] and (on_gpu or settings.quantization == "nf4")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if on_gpu else "cpu"
    model = load_causal_lm(
        base_model,
        dtype="bfloat16" if half else "float32",
        quantization=settings.quantization,
        attn_implementation=settings.attn_implementation,
        device=device if settings.quantization == "nf4" else None,
    )
    if settings.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings to float32, inputs that need grads for checkpointing.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing
        )
    return model


def _check_liger(on_gpu: bool) -> None:
    import importlib.util

    if not on_gpu:
        raise ValueError(
            "train.liger_kernel needs a CUDA GPU (its kernels are Triton); set "
            "train.liger_kernel=false on this machine"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise ValueError(
            "train.liger_kernel needs the liger-kernel package: pip install 'freshtune[gpu]', "
            "or set train.liger_kernel=false"
        )


def training_args(
    settings: TrainSettings, checkpoints: Path, seed: int, sampling: str, flat: bool = False
) -> Any:
    from transformers import TrainingArguments

    distributed = settings.processes > 1
    precision = pick_precision(settings.dtype)
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup,
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=2,  # the newest may be half-written when the process dies
        report_to="none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy=sampling,
        # A flattened batch has no padding (and no attention mask to count it by).
        include_num_input_tokens_seen="all" if flat else "non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=console.quiet(),  # quiet: our own bar (_token_bar)
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        torch_compile=settings.compile,
        use_liger_kernel=settings.liger_kernel,
        ddp_backend=("gloo" if precision["use_cpu"] else "nccl") if distributed else None,
        ddp_find_unused_parameters=False if distributed else None,
        **_fsdp(settings),
        **precision,
    )


def _fsdp(settings: TrainSettings) -> dict[str, Any]:
    # LoRA mixes frozen and trainable weights in one module: FSDP needs the original params.
    if settings.processes > 1 and settings.distributed == "fsdp":
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}
    return {}


def _gpu_peak() -> float:
    """Measured bf16 matmul FLOP/s of this GPU, the denominator of MFU."""
    import torch

    from tasks.throughput import matmul_peak_flops

    if not torch.cuda.is_available():
        return math.nan
    return matmul_peak_flops("cuda", "bfloat16")


@dataclass
class Accounting:
    """Turns the Trainer's token count into FLOPs, throughput, MFU, GPU-hours and cost."""

    per_token: float
    peak: float
    settings: TrainSettings
    on_cpu: bool
    start: float = 0.0
    last: tuple[float, int] = (0.0, 0)

    def step_metrics(self, tokens: int) -> dict[str, float]:
        now = time.perf_counter()
        then, before = self.last
        rate = (tokens - before) / max(now - then, 1e-9)
        self.last = (now, tokens)
        wall = now - self.start
        out = {"tokens": tokens, "wall_s": wall, "tokens_per_s": rate}
        out["flops"] = self.per_token * tokens
        if not self.on_cpu:
            processes = self.settings.processes
            out["mfu"] = rate * self.per_token / (self.peak * processes)
            out["gpu_hours"] = wall * processes / 3600
            out["cost"] = out["gpu_hours"] * self.settings.gpu_hour_price
        return out


def _token_bar() -> Any:
    """The training bar of a quiet terminal: steps, tokens/s and time left."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TokenBar(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(
                    total=state.max_steps, desc="training", unit="step", leave=False, disable=False
                )
                self.bar.update(state.global_step)
                self.started = (time.perf_counter(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                seconds = time.perf_counter() - self.started[0]
                tokens = state.num_input_tokens_seen - self.started[1]
                self.bar.set_postfix_str(f"{tokens / max(seconds, 1e-9):.0f} tok/s", refresh=False)
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return TokenBar()


class TrainingDiverged(RuntimeError):
    """Loss or weights stopped being finite: training stopped, nothing committed or registered."""


_DIVERGED_FIX = "lower train.learning_rate or check the drop for extreme rows"


def check_finite(model: Any, loss: float, step: int) -> None:
    """The last line before an adapter is saved: a non-finite loss or weight stops here."""
    import torch

    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: mean loss {loss} at step {step}; {_DIVERGED_FIX}"
        )
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise TrainingDiverged(
                f"training diverged: non-finite values in {name} at step {step}; {_DIVERGED_FIX}"
            )


def _divergence_guard() -> Any:
    """Stops training at the first logged non-finite loss or gradient norm."""
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for name in ("loss", "grad_norm"):
                value = (logs or {}).get(name)
                if isinstance(value, int | float) and not math.isfinite(value):
                    raise TrainingDiverged(
                        f"training diverged: {name} {value} at step {state.global_step}; "
                        f"{_DIVERGED_FIX}"
                    )

    return DivergenceGuard()


def _injected_faults() -> list[Any]:
    """Only when a fault is set: one after the first checkpoint, a NaN weight at step 2."""
    from transformers import TrainerCallback

    at_checkpoint, nan = faults.set_for("checkpoint"), faults.armed("train") == "nan"
    if not at_checkpoint and not nan:
        return []

    class Faults(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            faults.reach("checkpoint")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if nan and state.global_step == 2 and model is not None:
                import torch

                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)

    return [Faults()]


def _metrics_callback(accounting: Accounting, sink: Sink | None) -> Any:
    """Forwards the Trainer's log lines (loss, learning rate) and the compute figures."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            accounting.start = time.perf_counter()
            accounting.last = (accounting.start, state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if sink is None or not state.is_world_process_zero:
                return
            numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            sink(
                {**numeric, **accounting.step_metrics(state.num_input_tokens_seen)},
                state.global_step,
            )

    return MetricsCallback()


def launch_torchrun(
    base_model: str,
    rows: list[dict[str, Any]],
    settings: TrainSettings,
    parent: Path | None,
    seed: int,
    staging: Path,
    resume: Path | None,
    on_log: Sink | None,
    mirror: CheckpointMirror | None = None,
) -> FitStats:
    """`train.processes` workers under torchrun (DDP/FSDP) running `tasks.distributed`; with
    a `mirror`, rank 0 uploads each checkpoint as the single-process path does."""
    job = {
        "base_model": base_model,
        "rows": rows,
        "settings": settings.model_dump(mode="json"),
        "parent": str(parent) if parent else None,
        "seed": seed,
        "staging": str(staging),
        "resume": str(resume) if resume else None,
        "mirror": mirror.job() if mirror is not None and settings.save_steps else None,
    }
    job_file = staging / "job.json"
    job_file.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={settings.processes}", "-m", "tasks.distributed", str(job_file)]
    subprocess.run(cmd, check=True, env=_worker_env(settings.processes), cwd=_repo_root())
    for line in (staging / "steps.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if on_log is not None:
            on_log(record["metrics"], record["step"])
    stats = json.loads((staging / "fit.json").read_text(encoding="utf-8"))
    return FitStats(**stats)


def _worker_env(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    # CPU workers share the cores; oversubscribed threads make DDP on CPU crawl.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_repo_root()), env.get("PYTHONPATH")]))
    return env


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _save_result(folder: Path, result: TrainResult) -> None:
    data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    (folder / "train_result.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def _load_result(folder: Path) -> TrainResult:
    data = json.loads((folder / "train_result.json").read_text(encoding="utf-8"))
    known = {f.name for f in fields(TrainResult)}
    data = {k: v for k, v in data.items() if k in known}
    data["adapter_dir"] = folder
    data["parent_dir"] = Path(data["parent_dir"]) if data["parent_dir"] else None
    return TrainResult(**data)


def adapter_dir(mix: TrainingMix, parent: Path | None, cfg: FreshtuneConfig) -> Path:
    """Where the adapter of this mix, parent and config lands, wherever it is trained. Keyed by
    the configured base model, not its resolved path: every worker's workspace differs."""
    replays = bool(replayed(mix.rows))
    key = adapter_key(cfg.base_model, cfg.train, mix.digest, parent, cfg.seed, replays)
    return cfg.paths.adapters / key


def mix_file(cfg: FreshtuneConfig, digest: str) -> Path:
    return cfg.paths.root / "mixes" / f"{digest}.json"


def stored_adapter(cfg: FreshtuneConfig, key: str) -> Path:
    """Adapter `key` in this workspace, fetched from the artifact store if this worker lacks it."""
    from tasks import store

    return store.get(cfg, store.ADAPTERS, key, cfg.paths.adapters / key)


def train_from_mix(
    mix: TrainingMix, parent: Path | None, cfg: FreshtuneConfig, run_id: str
) -> TrainResult:
    """Train the mix where this process runs, logging step metrics to the cycle's MLflow run;
    the committed adapter goes to the artifact store, where any worker finds it by key."""
    from tasks import registry, store

    out = adapter_dir(mix, parent, cfg)
    if not out.exists() and (done := store.find(cfg, store.ADAPTERS, out.name, out)):
        return _load_result(done)  # trained on another worker already
    mirror = CheckpointMirror(cfg, out.name)
    steps = StepMetrics(registry.tracking_uri(cfg), run_id)
    try:
        result = train_adapter(
            cfg.resolved_base_model(),
            mix.rows,
            cfg.train,
            out,
            parent=parent,
            seed=cfg.seed,
            extra_files={"mix.json": json.dumps(mix.manifest(), indent=1)},
            on_log=steps,
            mirror=mirror,
        )
    finally:
        steps.close()
    store.put(cfg, store.ADAPTERS, result.adapter_dir.name, result.adapter_dir)
    mirror.clear()  # the committed adapter supersedes them
    registry.log_metrics(cfg, run_id, result.metrics())
    registry.set_tags(cfg, run_id, {"freshtune.train_stop": result.stop_reason})
    return result


def log_training_mix(cfg: FreshtuneConfig, run_id: str, mix: TrainingMix, path: Path) -> None:
    """The mix as an MLflow dataset input of the run, and its exact row ids as an artifact."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from tasks import registry

    manifest = mix.manifest()
    profile = {k: v for k, v in manifest.items() if k != "rows"}
    dataset = Dataset(
        name="training-mix",
        digest=mix.digest,
        source_type="local",
        source=json.dumps({"uri": path.as_uri()}),
        profile=json.dumps(profile),
    )
    tags = [InputTag("mlflow.data.context", "training")]
    registry.client(cfg).log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
    registry.log_text(cfg, run_id, json.dumps(manifest, indent=1), "mix.json")


def dispatch(mix: TrainingMix, parent: Path | None, cfg: FreshtuneConfig, run_id: str) -> None:
    """Run the `train-on-gpu` deployment of `train.work_pool` and wait for it to finish.

    Only ids travel: the worker fetches the mix and the parent adapter from the artifact store
    and puts the adapter there. A run that crashed (its worker or node lost, marked Crashed by
    the unresponsive-run automation `freshtune deploy` creates) is started again, up to
    `train.dispatch_attempts` runs, on whichever worker of the pool is alive; it resumes from
    the last checkpoint in the store. A run that failed (an error in training) is not retried.
    The idempotency key stops a retried task from starting a second run for one attempt.
    """
    from prefect.deployments import run_deployment

    name = f"{TRAIN_FLOW}/{cfg.train.work_pool}"
    # Absolute: a worker without FRESHTUNE_HOME resolves it against its own cwd.
    config = cfg.model_copy(update={"workspace": cfg.paths.root}).model_dump(mode="json")
    parameters = {
        "mix_digest": mix.digest,
        "parent_key": parent.name if parent else None,
        "config": config,
        "run_id": run_id,
    }
    for attempt in range(1, cfg.train.dispatch_attempts + 1):
        key = f"{run_id}-{mix.digest}" + (f"-{attempt}" if attempt > 1 else "")
        flow_run = run_deployment(name, parameters=parameters, timeout=None, idempotency_key=key)
        state = flow_run.state
        if state is not None and state.is_completed():
            return
        if state is None or not state.is_crashed():
            break
        log.warning("training run %s crashed (%s); starting it again", flow_run.name, state.message)
    raise RuntimeError(f"training deployment {name} ended {state}: no candidate")


@task(name="train-candidate", cache_policy=NO_CACHE)
@faults.after("train")
def train_candidate(
    mix: TrainingMix, champion: Champion | None, cfg: FreshtuneConfig, run_id: str
) -> TrainResult:
    """LoRA-train per `train.mode`: from the champion adapter (incremental, the default) or the
    base; in this process, or on the `train.work_pool` GPU workers when one is configured."""
    from tasks import store

    incremental = cfg.train.mode == "incremental" and champion is not None
    parent = champion.adapter_dir if incremental else None
    path = save_mix(mix, mix_file(cfg, mix.digest))
    store.put(cfg, store.MIXES, mix.digest, path)
    log_training_mix(cfg, run_id, mix, path)
    if cfg.train.work_pool is None:
        return train_from_mix(mix, parent, cfg, run_id)
    dispatch(mix, parent, cfg, run_id)
    return _load_result(stored_adapter(cfg, adapter_dir(mix, parent, cfg).name))


@task(name="train-adapter", cache_policy=NO_CACHE)
def train_stored_mix(
    mix_digest: str, parent_key: str | None, cfg: FreshtuneConfig, run_id: str
) -> str:
    """The worker side of `train-on-gpu`: fetch the mix and the parent adapter from the
    artifact store, train, put the adapter there; returns its key."""
    from tasks import store
    from tasks.models import ensure_base_model

    ensure_base_model(cfg)
    mix = load_mix(store.get(cfg, store.MIXES, mix_digest, mix_file(cfg, mix_digest)))
    parent = stored_adapter(cfg, parent_key) if parent_key else None
    return train_from_mix(mix, parent, cfg, run_id).adapter_dir.name
