"""Greedy answers to batches of chat prompts: what `generate` computes, less what it wastes.

Two savings, the same maths:

- Every prompt of a chat template begins with the same tokens (SmolLM2's default system turn
  is 20 of a general question's 37). Their keys and values are computed once, for one row,
  and every row of the batch attends to them: a row's own tokens follow, padded on their
  left, at the positions the row has alone.
- A row leaves the batch at its end token. A step of `generate` costs the whole batch until
  its longest answer ends; here it costs the rows still writing.

The pass over the rows' own tokens also scores their reference answers (the rows carry them
after the prompt, padded on the right), and its logits at each prompt's last token give the
first answer token. Used when the model's generation config asks for nothing beyond greedy
decoding to an end token (`plain_greedy`); `tasks.chat` calls `generate` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100

# Generation-config fields that change a greedy answer: `generate` applies them even with
# do_sample=False (Qwen2.5's config sets repetition_penalty 1.05, for one).
_SHAPING = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
    "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
    "sequence_bias", "exponential_decay_length_penalty", "num_beams", "penalty_alpha",
    "guidance_scale", "stop_strings", "watermarking_config", "low_memory",
)  # fmt: skip


@dataclass
class Prefix:
    """The tokens every prompt of a batch begins with, and their keys and values (one row)."""

    length: int
    cache: Any


def plain_greedy(generation_config: Any) -> bool:
    """Whether `generate(do_sample=False)` would be plain greedy decoding to an end token."""
    from transformers import GenerationConfig

    default = GenerationConfig()
    return all(getattr(generation_config, k, None) == getattr(default, k, None) for k in _SHAPING)


def end_tokens(generation_config: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many tokens every prompt begins with, leaving each prompt its last token (the one
    whose logits give the first answer token)."""
    length = min(map(len, prompts)) - 1
    first = prompts[0]
    for prompt in prompts[1:]:
        while length and prompt[:length] != first[:length]:
            length -= 1
    return max(length, 0)


def encode_prefix(model: Any, ids: list[int]) -> Prefix:
    import torch

    if not ids:
        return Prefix(0, None)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True,
                    logits_to_keep=1)  # fmt: skip
    return Prefix(len(ids), out.cache)


def answer_batch(
    model: Any,
    prefix: Prefix,
    rests: list[list[int]],
    refs: list[list[int]],
    max_new: int,
    stops: list[int],
    pad_id: int,
) -> tuple[list[list[int]], list[tuple[float, int] | None]]:
    """Each row's answer tokens (its end token included when it wrote one) and, where it has
    a reference, the reference's (summed NLL, tokens). `rests`: each prompt after the prefix."""
    import torch

    ids, mask, width = layout(prefix, rests, refs, pad_id, model.device)
    cache = _batch_cache(prefix, len(rests))
    with torch.inference_mode():
        keep = ids.shape[1] - width + 1  # the prompts' last token and the references
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask, ids),
                    cache=cache, use_cache=True, logits_to_keep=keep)  # fmt: skip
        scores = (
            reference_scores(out.logits, ids, mask, width) if any(refs) else [None] * len(rests)
        )
        if ids.shape[1] > width:
            out.cache.crop(width - ids.shape[1])  # a negative count: the references leave
        mask = mask[:, : prefix.length + width]
        answers = _greedy(model, out.cache, mask, out.logits[:, 0], max_new, stops)
    return answers, scores


def layout(prefix: Prefix, rests, refs, pad_id: int, device: Any) -> tuple[Any, Any, int]:
    """input_ids (pad + rest + reference + pad, every prompt ending in column `width` - 1),
    the attention mask over prefix + input_ids, and `width`."""
    import torch

    width, tail = max(map(len, rests)), max(map(len, refs))
    rows, masks = [], []
    for rest, ref in zip(rests, refs):
        left, right = width - len(rest), tail - len(ref)
        rows.append([pad_id] * left + rest + ref + [pad_id] * right)
        masks.append([1] * prefix.length + [0] * left + [1] * (len(rest) + len(ref)) + [0] * right)
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device), width


def positions(mask: Any, ids: Any) -> Any:
    """Each input token's position in its own row, as generation gives left-padded rows (so
    cached keys fit its decoding); `mask` may also cover a cached prefix before `ids`."""
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]


def _batch_cache(prefix: Prefix, rows: int) -> Any:
    import copy

    if prefix.cache is None:
        return None
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(rows)
    return cache


def reference_scores(logits: Any, ids: Any, mask: Any, width: int) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of the references after column `width`."""
    import torch

    start = mask.shape[1] - ids.shape[1] + width  # the mask also covers the prefix
    target = ids[:, width:].masked_fill(mask[:, start:] == 0, IGNORE)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
    )
    counts = (target != IGNORE).sum(dim=1)
    return [(float(s), int(c)) for s, c in zip(losses.sum(dim=1), counts)]


def _greedy(model: Any, cache: Any, mask: Any, logits: Any, max_new: int, stops: list[int]):
    """Greedy tokens from `logits` (each row's next-token logits), at most `max_new` a row;
    a row that writes an end token leaves the batch and its cache."""
    import torch

    rows = torch.arange(mask.shape[0], device=mask.device)
    answers: list[list[int]] = [[] for _ in range(mask.shape[0])]
    ends = torch.tensor(stops, device=mask.device, dtype=torch.long)
    for step in range(max_new):
        chosen = logits.argmax(-1)
        for row, token in zip(rows.tolist(), chosen.tolist()):
            answers[row].append(token)
        going = ~torch.isin(chosen, ends)
        if step == max_new - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, chosen = rows[keep], mask[keep], chosen[keep]
        logits, mask = _step(model, cache, mask, chosen)
    return answers


def _step(model: Any, cache: Any, mask: Any, chosen: Any) -> tuple[Any, Any]:
    import torch

    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    position = mask.sum(-1, keepdim=True) - 1
    out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position,
                cache=cache, use_cache=True)  # fmt: skip
    return out.logits[:, -1], mask
