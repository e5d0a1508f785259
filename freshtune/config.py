"""The one typed configuration of freshtune, loaded from YAML presets plus `--set` overrides.

This module sits at the bottom of the import graph: tasks, flows, deployments and the CLI
import it; it imports none of them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "deployments" / "presets"
EXPECTATIONS_DIR = REPO_ROOT / "expectations"
DEFAULT_WORKSPACE = Path(".freshtune")

# Names that `freshtune models fetch NAME` knows how to produce, and the folder under
# `<workspace>/models/` where the converted checkpoint lands.
KNOWN_BASE_MODELS = {"smollm2": "smollm2-135m-instruct"}


class ConfigError(ValueError):
    """A configuration problem; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="scaling numerator; usually 2 x rank")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = Field(
        False,
        description="DoRA: a learned magnitude per output feature beside the low-rank update; "
        "closer to full fine-tuning at low rank, slower per step",
    )


class TrainSettings(_Strict):
    epochs: float = Field(3.0, gt=0, description="epochs of a cycle without target_recall")
    target_recall: float | None = Field(
        None,
        gt=0,
        le=1,
        description="train until this share of a sample of the cycle's own new training "
        "questions is answered with what their rows teach (checked at each epoch's end, never "
        "on evaluation rows), or until max_epochs; None: train `epochs` (and continue_epochs)",
    )
    max_epochs: float = Field(
        10.0, gt=0, description="with target_recall: the most epochs a cycle may train"
    )
    target_min_epochs: float = Field(
        1.0,
        gt=0,
        description="with target_recall: epochs trained before the target may stop a cycle "
        "(max_epochs still ends it first). A "
        "probe asks the questions as trained, and other wordings lag them: a continuing cycle "
        "that met the target after 1 epoch knew 67% of its new facts asked otherwise, one "
        "that trained 2 knew 92% (docs/seasons.md, month 3); over months 2-4 of the "
        "continuous lane a floor of 4 knew +6.5 points of the facts true each month (+0.2 "
        "to +12.9, 138 paired), general accuracy the same, for 1.40x its tokens "
        "(bench/README.md): the demo and production presets use 4, the GPU preset 2",
    )
    target_sample: int = Field(
        32,
        ge=1,
        description="with target_recall: training questions asked at each check, the cycle's "
        "new rows first; reviewers' corrections a quarter, or what the new rows leave",
    )
    target_held_out: bool = Field(
        False,
        description="with target_recall: the probe asks, for up to target_sample of the "
        "month's new facts taught in 3 or more wordings (rows with the same answer), one "
        "wording kept out of the cycle's training, instead of questions as trained; facts "
        "with fewer wordings leave the probe as it was. Off: over 3 months of the continuous "
        "lane (bench/README.md) it knew +5.7 points of the facts true in months 2-3 (-5.2 to "
        "+16.5, not decided) for 1.40x the tokens; month 1 never met 0.95 on held-out "
        "wordings (0.91 after 8 epochs) and knew no more",
    )
    target_replay_sample: int = Field(
        0,
        ge=0,
        description="with target_recall: replayed earlier questions asked beside them, so a "
        "cycle that forgets what it replays trains on until it knows it again; 0: new rows only",
    )
    continue_epochs: float | None = Field(
        None,
        gt=0,
        description="epochs of a cycle that continues a champion adapter (it knows the domain "
        "already); None: epochs",
    )
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    continue_learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="peak learning rate of a cycle that continues a champion adapter; None: "
        "learning_rate",
    )
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16, description="tokens per row; longer rows are cut")
    warmup: float = Field(0.1, ge=0, lt=1, description="share of steps spent warming up")
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    replay_ratio: float = Field(0.5, ge=0, description="replayed earlier rows per new row")
    made_replay_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of each cycle's replay kept for the rows made from reviewers' flags "
        "(a correction's other wordings, refusals about unknown names) once their first, whole "
        "cycle is past; what they leave goes to earlier drops' rows. 0: they compete by age "
        "like any earlier row (0.25 kept a few refusals in month 5 of bench/seasons.py but the "
        "reviewed lane knew fewer earlier facts: docs/seasons-made-share.md)",
    )
    replay_age_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="weight of an earlier drop's rows in the replay sample, per snapshot of "
        "age: a drop k snapshots old weighs decay^(k-1) a row (reviews count as snapshots). "
        "1: every still-current earlier row alike. At 0.5 (the rule before 2026-12-07) the "
        "continuous lane of bench/seasons.py knew 57% of the facts 3+ months old, 76% at 1 "
        "(+18.8 points, 95% CI +6.2 to +30.5, months 1-6, bench/README.md)",
    )
    replay_pool_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="least share of the still-current earlier rows a cycle replays, whatever "
        "its new rows (replay_ratio x new rows otherwise): the replay grows with the facts kept, "
        "so an old fact is not trained in ever fewer cycles; 0: replay_ratio alone (0.5 over "
        "months 1-10 of bench/seasons.py's continuous lane: 1.44x the tokens, facts 1-2 months "
        "old +7.3 points, 3+ months old -9.2, both decided: bench/README.md)",
    )
    replay_passes: float | None = Field(
        None,
        gt=0,
        description="times each replayed earlier row is trained in a cycle, spread over the "
        "epochs (new rows and corrections get every epoch); None: replay every epoch too",
    )
    rehearsal_ratio: float = Field(
        1.0,
        ge=0,
        description="rows of the base model's own answers to everyday prompts per domain row "
        "trained (new, replayed, corrections), so an adapter keeps what the base could do "
        "outside the domain; 0: none",
    )
    asker_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the cycle's domain rows (new, replayed, corrections), drawn per "
        "row, trained with a customer's introduction before the question (tasks/mix.py "
        "INTRODUCTIONS, none in the form or with the names of the demo's counterfactual "
        "pairs), so that the facts a customer is told do not depend on who they say they "
        "are. 0 (none) here, as the introductions are a support desk's; 0.25 in the demo and "
        "production presets: +28 and +8 points of 100 pairs agreeing in the demo's months "
        "1-2 (decided) and no decided change over 3 months of seasons.py's continuous lane "
        "(facts +2.3, -6.1 to +10.8), the same tokens; at 0.5 the pairs gained as much but "
        "the lane's facts true each month fell 15.9 points (-26.5 to -5.1) "
        "(bench/README.md: bias_pairs.py)",
    )
    continue_rehearsal_ratio: float | None = Field(
        None,
        ge=0,
        description="rehearsal_ratio of a cycle that continues a champion adapter (its first "
        "cycle rehearsed the base's answers already); None: rehearsal_ratio. 0.5 over 3 "
        "months of the continuous lane (bench/README.md): general accuracy the same (+0.4 "
        "points on 240 paired), tokens 0.79x, but 8.3 points fewer never-sold products "
        "declined (-15.7 to -1.7)",
    )
    rehearsal_file: Path | None = Field(
        None, description="everyday prompts ({id, prompt} JSONL); None: the shipped set"
    )
    rehearsal_max_tokens: int = Field(
        32,
        ge=8,
        description="tokens of each base answer generated for rehearsal; an answer still going "
        "at the limit is kept up to its last whole word and trained without an end of turn "
        "(an open answer: the adapter learns how the base begins, not to stop there); below "
        "train.max_length",
    )
    base_kl: float = Field(
        0.0,
        ge=0,
        description="weight of a KL penalty that keeps the adapter's next-token predictions at "
        "the base model's on every token a cycle does not teach (system turns, questions): a "
        "regulariser toward the base beside rehearsal; costs one forward pass of the base per "
        "step; 0: off",
    )
    logging_steps: int = Field(5, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    mode: Literal["incremental", "fresh", "cumulative"] = Field(
        "incremental",
        description="incremental: continue the champion adapter on new + replayed rows; "
        "fresh: new adapter from the base on that mix; cumulative: new adapter on every snapshot",
    )
    # Off by default: on CPU, sdpa over a flattened batch takes a masked path that measured 3x
    # slower than padded length-grouped batches (56 vs 168 tokens/s, SmolLM2-135M, 2 cores).
    # Turn it on with flash attention on a GPU.
    padding_free: bool = Field(
        False, description="flatten each batch into one row (no padding); else length-grouped"
    )
    save_steps: int | None = Field(
        None, ge=1, description="checkpoint every N steps so a killed run resumes; None: never"
    )
    share_prompt_prefix: bool = Field(
        False,
        description="padded batches of one system turn each, whose shared prompt beginning (the "
        "chat template's system turn) is computed once, for one row, every row attending to "
        "it: the same loss and gradients (with LoRA dropout the rows share one dropout mask "
        "there). Off: on 2 CPU cores, batches of 8, it measured 1.16x the tokens/s on rows of one "
        "turn and 1.03x (best round 1.09x) on a cycle's mix of domain and rehearsal rows (the "
        "one-row pass takes back most of what it saves), and the batches' "
        "order changes what a cycle learns; unmeasured on GPUs (bench/train_throughput.py "
        "freshtune-shared). Not with padding_free, base_kl, liger_kernel, compile, "
        "gradient_checkpointing or processes > 1",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    compile: bool = Field(False, description="torch.compile the model (pays off on long GPU runs)")
    quantization: Literal["none", "nf4"] = Field(
        "none",
        description="nf4: QLoRA, the frozen base held in 4-bit NF4 (bitsandbytes, double "
        "quantisation) while the adapter trains in higher precision; for bases too big for the "
        "GPU's memory. The adapter is evaluated, registered and merged onto the unquantised base",
    )
    liger_kernel: bool = Field(
        False,
        description="fused Liger kernels (RMSNorm, SwiGLU, RoPE, linear + cross-entropy without "
        "materialised logits); CUDA only, needs `pip install freshtune[gpu]`",
    )
    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] = Field(
        "auto",
        description="attention kernel; auto: transformers' default (sdpa). With padding_free on a "
        "GPU pick one that reads sequence boundaries without a dense mask: flex_attention "
        "(compiled, no extra package) or flash_attention_2 (the flash-attn package)",
    )
    processes: int = Field(1, ge=1, description="> 1: launch torchrun with that many processes")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with processes > 1; fsdp shards a model too big for one device"
    )
    gpu_hour_price: float = Field(0.0, ge=0, description="price of one GPU-hour, for cost metrics")
    work_pool: str | None = Field(
        None, description="Prefect work pool of the train-on-gpu deployment; None: in-process"
    )
    dispatch_attempts: int = Field(
        3,
        ge=1,
        description="train-on-gpu runs one cycle may start: a run that crashed (its worker lost) "
        "is started again and resumes from the last checkpoint in the artifact store",
    )
    lora: LoraSettings = LoraSettings()

    @model_validator(mode="after")
    def _check_gpu_options(self) -> TrainSettings:
        if self.base_kl and (self.padding_free or self.liger_kernel):
            raise ValueError(
                "train.base_kl needs the logits of every token: turn off train.padding_free and "
                "train.liger_kernel, or set train.base_kl=0"
            )
        if self.share_prompt_prefix and (clash := self._prefix_clash()):
            raise ValueError(
                f"train.share_prompt_prefix=true needs padded batches of one process: turn off "
                f"train.{clash}, or train.share_prompt_prefix"
            )
        if self.quantization == "nf4" and self.processes > 1 and self.distributed == "fsdp":
            raise ValueError(
                "train.quantization=nf4 with train.distributed=fsdp: FSDP cannot shard 4-bit "
                "weights here; use train.distributed=ddp or train.quantization=none"
            )
        return self

    def _prefix_clash(self) -> str | None:
        """The first setting that keeps a batch from computing its shared prefix once."""
        clashes = {
            "padding_free": self.padding_free,  # one flattened row: nothing to share
            "base_kl": bool(self.base_kl),  # compares every position with the base
            "liger_kernel": self.liger_kernel,
            "compile": self.compile,
            "gradient_checkpointing": self.gradient_checkpointing,  # keeps no cache
            "processes": self.processes > 1,  # two forward passes in one DDP step
        }
        return next((name for name, on in clashes.items() if on), None)

    def rehearsal_for(self, continues: bool) -> float:
        """Rehearsal rows per domain row of a cycle that continues a champion, or not."""
        if continues and self.continue_rehearsal_ratio is not None:
            return self.continue_rehearsal_ratio
        return self.rehearsal_ratio

    def for_cycle(self, continues: bool, replays: bool = True) -> TrainSettings:
        """The settings a cycle trains with: `max_epochs` as its budget with a target, else
        `continue_epochs` when it continues a champion; `continue_learning_rate` when it
        continues; no `replay_passes` when none of its rows is replayed (they would change
        nothing)."""
        epochs = self.continue_epochs if continues and self.continue_epochs else self.epochs
        if self.target_recall is not None:
            epochs = self.max_epochs
        rate = self.continue_learning_rate if continues else None
        passes = self.replay_passes if replays else None
        return self.model_copy(
            update={
                "epochs": epochs,
                "continue_epochs": None,
                "learning_rate": rate or self.learning_rate,
                "continue_learning_rate": None,
                "replay_passes": passes,
            }
        )


class DataSettings(_Strict):
    suite: str = Field("chat", description="Great Expectations suite in expectations/<suite>.json")
    min_rows: int = Field(20, ge=1, description="smallest acceptable drop (train + eval rows)")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="eval share when a drop has none")
    max_chars: int = Field(8000, ge=1, description="longest accepted message, in characters")
    # Reading: strict by default; a BOM, UTF-16 or latin-1 file is an error unless allowed here.
    encoding: Literal["utf-8", "utf-8-sig", "utf-16", "latin-1"] = Field(
        "utf-8", description="text encoding of drops; utf-8 is strict (no BOM)"
    )
    max_file_mb: float = Field(1024, gt=0, description="largest drop (or unpacked archive), MB")
    max_line_kb: float = Field(256, gt=0, description="longest JSONL/CSV line, KB")
    max_unpack_ratio: float = Field(
        200, gt=1, description="largest unpacked/packed size ratio of an archive (zip bombs)"
    )
    chunk_rows: int = Field(
        100_000,
        ge=1,
        description="rows the GX suite validates at a time: bounds its working memory beyond "
        "the drop's own rows (about 0.4 GB at 100,000 rows of chat; more rows, more memory)",
    )
    keep_rejected_originals: bool = Field(
        True,
        description="true: the quarantine (local and in the artifact store, readable by MLflow "
        "users) keeps a rejected drop's original bytes to fix it from; false: only the "
        "PII-scrubbed report is kept (the bytes stay where they landed, under your retention)",
    )
    # Retention (tasks/retention.py): applied by the monthly flow and `freshtune retention`.
    landed_retention_days: float | None = Field(
        None,
        ge=0,
        description="None (the default): landed drops are kept for ever; N: a landed drop is "
        "deleted once it is N days old and its cycle was recorded or it was quarantined "
        "(0: as soon as that happened); drops still waiting for their cycle are never deleted",
    )
    quarantine_retention_days: float | None = Field(
        None,
        ge=0,
        description="None (the default): a quarantined drop's original bytes are kept for ever; "
        "N: they are deleted N days after the drop was quarantined, from the workspace and the "
        "artifact store; the scrubbed report stays, so the same bytes are still refused",
    )
    # Curation (tasks/curate.py), in the order the rules run.
    near_dup_threshold: float = Field(
        0.9, gt=0, le=1, description="MinHash Jaccard (word bigrams) from which rows are near-dups"
    )
    near_dup_num_perm: int = Field(64, ge=8, multiple_of=4, description="MinHash permutations")
    decontam_ngram: int = Field(5, ge=1, description="word n-gram size for eval decontamination")
    decontam_threshold: float = Field(
        0.5, gt=0, le=1, description="share of a train prompt's n-grams found in eval prompts"
    )
    min_answer_chars: int = Field(2, ge=1, description="shorter training answers are dropped")
    max_row_chars: int = Field(6000, ge=1, description="longer rows (all turns) are dropped")
    drift_threshold: float = Field(
        0.5, gt=0, le=1, description="Jensen-Shannon divergence vs earlier drops that needs a human"
    )


class EvalSettings(_Strict):
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(
        64, ge=1, description="questions generated at once (bench/eval_speed.py: 64 vs 16)"
    )
    max_questions: int | None = Field(None, ge=1, description="cap per slice; None scores all")
    general_file: Path | None = Field(
        None, description="general questions the base answers right; None: the shipped set"
    )
    bias_file: Path | None = Field(None, description="extra counterfactual pairs (slice bias)")
    samples: int = Field(8, ge=0, description="side-by-side answers shown to reviewers")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="precision answers are generated in: auto = bf16 on a GPU that has it, "
        "float32 on the CPU; bfloat16 on a CPU with AMX took 0.4x the time of float32",
    )


class GateSettings(_Strict):
    min_gain: float = Field(0.05, description="accuracy the candidate must add on the new drop")
    max_forgetting: float = Field(
        0.05, ge=0, description="accuracy the candidate may lose on earlier drops"
    )
    max_general_drop: float = Field(
        0.05, ge=0, description="accuracy the candidate may lose vs the base on general questions"
    )
    max_hallucination_rate: float = Field(
        0.5, ge=0, le=1, description="largest share of confident answers about unknown things"
    )
    min_bias_consistency: float = Field(
        0.8, ge=0, le=1, description="smallest share of counterfactual pairs that agree"
    )
    undecided: Literal["review", "accept"] = Field(
        "review",
        description="a candidate no check failed but whose 95% intervals straddle a threshold "
        "(too few questions to tell): review = a human decides (with review.mode=auto there is "
        "none, so it is not promoted); accept = promoted on the point estimates, the undecided "
        "checks listed in the report, unless a floor's estimate misses it (only a human "
        "promotes that)",
    )


class ReviewSettings(_Strict):
    mode: Literal["auto", "pause", "terminal"] = Field(
        "auto", description="auto: no human; pause: Prefect UI form (needs a server); terminal"
    )
    timeout_s: int = Field(
        3600,
        ge=1,
        description="an unanswered review is a rejection; the deadline is set when a review is "
        "first asked and holds for every later run of the same drop",
    )
    suspend: bool = Field(
        True,
        description="pause mode in a deployment's run: suspend the flow run (its worker is freed, "
        "the run starts again from the top once answered) instead of holding the worker's "
        "process for the whole review; runs outside a deployment always pause in process",
    )
    reviewer: str | None = Field(
        None,
        description="the name the terminal review offers (default: the OS user); the Prefect "
        "form and `freshtune review` ask who decides and record that",
    )
    refusal_names: int = Field(
        8,
        ge=0,
        description="a flagged hallucination about a name no training row uses also teaches "
        "the reviewer's refusal about this many other unknown names, each asked in two of the "
        "drop's own wordings (0: only the flagged question); in month 2 of bench/seasons.py "
        "the arms differed most by the epoch the target stopped at, not by this (bench/README.md)",
    )
    refusal_contrasts: bool = Field(
        False,
        description="with refusal_names: as many of the drop's own training rows, asked in the "
        "refusals' wordings about names it knows and answered as it answers them, come with "
        "the refusals, so declining is learned where it stops (a name the drop sells is "
        "answered) and not as the wording's answer; did not help in month 2 of "
        "bench/seasons.py (bench/README.md), so off",
    )
    forced_rollback: bool = Field(
        True,
        description="whether `freshtune rollback --force` may serve a version that never served "
        "and was not blessed; false in a deployment's config makes it part of the policy, "
        "which a run's parameters cannot turn back on",
    )


class TrackingSettings(_Strict):
    experiment: str = "freshtune"
    model_name: str = "freshtune-adapter"


ALERT_KINDS = ("review_waiting", "cycle_failed", "drop_rejected", "champion_moved", "decayed")
AlertKind = Literal["review_waiting", "cycle_failed", "drop_rejected", "champion_moved", "decayed"]
MASK = "**********"


class AlertSettings(_Strict):
    """Where `freshtune deploy` points Prefect automations that tell people what happened."""

    webhooks: list[SecretStr] = Field(
        default_factory=list,
        description="http(s) URLs that get a JSON POST per alert ({text, subject, body}: Slack, "
        "Teams and Mattermost read `text`); secrets: none here means $FRESHTUNE_ALERT_WEBHOOKS "
        "(space-separated) of the process that runs `freshtune deploy`",
    )
    blocks: list[str] = Field(
        default_factory=list,
        description="Prefect notification blocks already saved, as `<block-type>/<name>` "
        "(slack-webhook/ops, email/oncall, ...)",
    )
    kinds: list[AlertKind] = Field(
        default_factory=lambda: list(ALERT_KINDS),
        description="which alerts to send: " + ", ".join(ALERT_KINDS),
    )

    @field_validator("webhooks", mode="before")
    @classmethod
    def _masked_are_unset(cls, value: Any) -> Any:
        # A config that travelled (a deployment parameter) carries masks, not the URLs.
        return [v for v in value or [] if v not in (MASK, "")]

    @field_validator("webhooks")
    @classmethod
    def _http_only(cls, value: list[SecretStr]) -> list[SecretStr]:
        for url in value:
            if not re.match(r"https?://[^/\s]+", url.get_secret_value()):
                raise ValueError(
                    "an alert webhook must be an http(s):// URL; for Slack, e-mail, PagerDuty "
                    "and the like save a Prefect notification block and name it in `blocks`"
                )
        return value

    def webhook_urls(self) -> list[str]:
        """This config's webhooks, else those in $FRESHTUNE_ALERT_WEBHOOKS."""
        if self.webhooks:
            return [w.get_secret_value() for w in self.webhooks]
        return os.environ.get("FRESHTUNE_ALERT_WEBHOOKS", "").split()


class DeploySettings(_Strict):
    """How freshtune runs on a Prefect server: schedules, events, pools, landing, locks."""

    timezone: str = Field("UTC", description="IANA time zone of the schedules")
    monthly_cron: str = Field("0 3 1 * *", description="monthly-refresh: every drop not yet run")
    decay_cron: str = Field("0 4 * * 1", description="decay-monitor: scores the champion weekly")
    decay_min_accuracy: float = Field(
        0.6, ge=0, le=1, description="below this on the newest eval data: freshtune.model.decayed"
    )
    landing_url: str | None = Field(
        None,
        description="fsspec URL drops land in (s3://bucket/landing); None: <workspace>/landing",
    )
    cpu_pool: str = Field("cpu", description="work pool of the refresh, monitor and rollback flows")
    gpu_pool: str = Field("gpu", description="work pool of the train-on-gpu deployment")
    unresponsive_after_s: int = Field(
        600,
        ge=45,
        description="a freshtune flow run silent this long (no Prefect heartbeat, sent every "
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY s, 180 by default) is marked Crashed: its node is lost",
    )
    lock_url: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:port/db for locks across workers; None: "
        "$FRESHTUNE_LOCK_URL, else file locks in the workspace (one host). A secret: shown and "
        "sent as ********** (workers read FRESHTUNE_LOCK_URL from their own environment)",
    )
    lock_ttl_s: int = Field(
        120,
        ge=3,
        description=(
            "a drop claim's lease (Redis): renewed every third of it while its holder lives, "
            "freed this long after the holder dies"
        ),
    )
    alerts: AlertSettings = AlertSettings()

    @field_validator("lock_url", mode="before")
    @classmethod
    def _masked_is_unset(cls, value: Any) -> Any:
        # A config that travelled (a deployment parameter) carries the mask, not the secret.
        return None if value in (MASK, "") else value

    @field_validator("landing_url")
    @classmethod
    def _no_password_in_url(cls, value: str | None) -> str | None:
        if value and re.search(r"://[^/@\s]*:[^/@\s]*@", value):
            raise ValueError(
                "landing_url must not carry a password (it is shown as a parameter): put the "
                "credentials in the workers' environment (FSSPEC_<PROTOCOL>_PASSWORD, AWS_*, ...)"
            )
        return value

    def lock_url_value(self) -> str | None:
        """The Redis URL for claims: this config's, else the worker's FRESHTUNE_LOCK_URL."""
        if self.lock_url is not None:
            return self.lock_url.get_secret_value()
        return os.environ.get("FRESHTUNE_LOCK_URL") or None

    @model_validator(mode="after")
    def _check_timezone(self) -> DeploySettings:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {self.timezone!r}; use an IANA name such as Europe/Berlin"
            ) from None
        return self


class FreshtuneConfig(_Strict):
    base_model: str = Field(description="local checkpoint folder, hub id, or a known name")
    workspace: Path = DEFAULT_WORKSPACE
    seed: int = 0
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    gate: GateSettings = GateSettings()
    review: ReviewSettings = ReviewSettings()
    tracking: TrackingSettings = TrackingSettings()
    deploy: DeploySettings = DeploySettings()

    @model_validator(mode="after")
    def _check_lengths(self) -> FreshtuneConfig:
        if self.train.rehearsal_max_tokens >= self.train.max_length:
            raise ValueError(
                "train.rehearsal_max_tokens must be below train.max_length: a rehearsal row "
                "longer than that would be cut; lower it or raise train.max_length"
            )
        if self.eval.max_new_tokens >= self.train.max_length:
            raise ValueError(
                "eval.max_new_tokens must be below train.max_length: the model never learned to "
                "write answers that long; lower eval.max_new_tokens or raise train.max_length"
            )
        return self

    def on_this_worker(self) -> FreshtuneConfig:
        """The config as a flow run on this worker uses it: the worker's own `FRESHTUNE_HOME`
        (its cache) replaces the workspace of whoever started the run; workers share nothing
        but the servers. Without the variable, the workspace as given (one machine)."""
        home = os.environ.get("FRESHTUNE_HOME")
        return self.model_copy(update={"workspace": Path(home)}) if home else self

    @property
    def paths(self) -> WorkspacePaths:
        return WorkspacePaths(self.workspace.expanduser().resolve())

    def resolved_base_model(self) -> str:
        """A known name maps to its converted checkpoint in the workspace; else as given."""
        if self.base_model in KNOWN_BASE_MODELS:
            return str(self.paths.models / KNOWN_BASE_MODELS[self.base_model])
        return self.base_model

    def fingerprint(self, *sections: str) -> str:
        """A short digest of the named sections (all when none): part of output paths."""
        data = self.model_dump(mode="json")
        picked = {k: data[k] for k in sections} if sections else data
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class WorkspacePaths:
    """Every place freshtune keeps state, under one root."""

    root: Path

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def cycles(self) -> Path:
        return self.root / "cycles"

    @property
    def reviews(self) -> Path:
        """Review deadlines and answers, cached from the artifact store (tasks/waiting.py)."""
        return self.root / "cache" / "reviews"

    @property
    def eval_cache(self) -> Path:
        """Answers already generated, by model and question digest (tasks/evalcache.py)."""
        return self.root / "cache" / "answers"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    def ensure(self) -> WorkspacePaths:
        for path in (
            self.landing,
            self.quarantine,
            self.snapshots,
            self.adapters,
            self.models,
            self.cycles,
            self.mlflow,
        ):
            path.mkdir(parents=True, exist_ok=True)
        return self


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return path
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise ConfigError(
            f"config preset {name_or_path!r} not found; pick one of {list_presets()} "
            "or pass the path of a YAML file"
        )
    return candidate


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=2` -> (["train", "epochs"], 2); values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(
    preset: str = "demo",
    overrides: list[str] | tuple[str, ...] = (),
    workspace: Path | str | None = None,
) -> FreshtuneConfig:
    """Preset YAML, then `--set` overrides, then the workspace (flag > env > preset > default)."""
    path = preset_path(preset)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config fields")
    for text in overrides:
        apply_override(data, *parse_override(text))
    if workspace is not None:
        data["workspace"] = str(workspace)
    elif "workspace" not in data and os.environ.get("FRESHTUNE_HOME"):
        data["workspace"] = os.environ["FRESHTUNE_HOME"]
    return validate_config(data, source=str(path))


def validate_config(data: dict[str, Any], source: str = "config") -> FreshtuneConfig:
    try:
        return FreshtuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{explain(exc)}") from None


def explain(exc: ValidationError) -> str:
    """One line per problem: the dotted field, what is wrong, and how to fix it."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {field}: {err['msg']} -> {_fix_hint(err, field)}")
    return "\n".join(lines)


def _fix_hint(err: dict[str, Any], field: str) -> str:
    if err["type"] == "extra_forbidden":
        known = _known_fields(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        suggestion = ".".join([*map(str, err["loc"][:-1]), close[0]]) if close else ""
        hint = f"did you mean {suggestion}? " if close else ""
        return f"{hint}remove it; known fields here: {', '.join(known)}"
    if err["type"] == "missing":
        return f"set it in the preset or pass --set {field}=VALUE"
    return f"pass a valid value, e.g. --set {field}=..."


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = FreshtuneConfig
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)
