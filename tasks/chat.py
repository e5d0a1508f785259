"""Chat conversations as token ids for training, and greedy answers to them for evaluation.

Both sides of the loop tokenise a conversation the same way: the prompt the model is trained
under is the prompt it answers at evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from freshtune import console
from freshtune.config import EvalSettings
from tasks.decode import IGNORE


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, open_end: bool = False
) -> dict:
    """Token ids and labels that train only on assistant turns.

    Each piece is tokenised on its own, exactly as generation will see the prompt, so the
    boundary between prompt and answer never merges into one token. `open_end`: the last
    answer is the start of a longer one, trained without the end of its turn (so the model
    does not learn to stop there).
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
        if open_end and i == len(messages) - 1 and message["role"] == "assistant":
            text = done + message["content"]
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
    """Pad a batch to its longest row, on the right; padding is masked out of the loss."""
    import torch

    def _collate(batch: list[dict]) -> dict:
        width = max(len(row["input_ids"]) for row in batch)

        def padded(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        return {
            "input_ids": torch.tensor([padded(r["input_ids"], pad_id) for r in batch]),
            "labels": torch.tensor([padded(r["labels"], IGNORE) for r in batch]),
            "attention_mask": torch.tensor([padded([1] * len(r["input_ids"]), 0) for r in batch]),
        }

    return _collate


def generate_answers(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    settings: EvalSettings,
    bar: Any = None,
    grouped: bool = True,
) -> list[str]:
    """Greedy, batched, deterministic answers to each row's conversation minus its answer, in
    the rows' order. Progress goes to `bar` (a tqdm shared by several calls) or a bar of its
    own. `grouped`: batch rows with the same system turn together (a batch encodes the
    beginning its prompts share once) and, within it, rows with reference answers of like
    length (a batch's prompts and references are padded to its longest), then put the
    answers back in order."""
    return [a for a, _ in _answered(model, tokenizer, rows, settings, bar, grouped, False)]


def answer_and_score(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    settings: EvalSettings,
    bar: Any = None,
    grouped: bool = True,
    use_generate: bool = False,
) -> list[tuple[str, tuple[float, int]]]:
    """Each row's greedy answer (as `generate_answers`) and the (summed negative
    log-likelihood, tokens) of its reference answer, for perplexity.

    One forward pass over prompt + reference scores the reference and is generation's
    prefill: each prompt goes through the model once, not twice. Prompts are padded on the
    left and references on the right, so every prompt ends in the same column, and the
    vocabulary projection runs over the references' positions only. Decoding is
    `tasks.decode`'s (a batch's shared beginning encoded once, a finished row leaves the
    batch) unless the model's generation config shapes greedy answers, or `use_generate`
    asks for transformers' `generate` from the pass's cache (evaluation before 2026-12-06:
    bench/eval_speed.py's peer)."""
    return _answered(model, tokenizer, rows, settings, bar, grouped, True, use_generate)


def _answered(
    model, tokenizer, rows, settings, bar, grouped, score, use_generate=False
) -> list[tuple[str, Any]]:
    """Answers (and, with `score`, the reference answers' scores) batch by batch, in order."""
    from tqdm.auto import tqdm

    prompts = [_prompt_ids(tokenizer, r["messages"][:-1]) for r in rows]
    refs = [_reference_ids(tokenizer, r["messages"]) if score else [] for r in rows]
    keys = [
        (system_turn(r), len(r["messages"][-1]["content"]), len(p)) for r, p in zip(rows, prompts)
    ]
    order = batch_order(keys, grouped)
    size = settings.batch_size
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    # A quiet terminal shows the bars of whole stages only (the training-target probe's
    # answers are generated inside training's bar).
    own = None if bar is not None else tqdm(total=len(batches), desc="generating",
                                            leave=False, disable=console.quiet())  # fmt: skip
    answer = _answerer(model, tokenizer, settings, use_generate)
    out: list[tuple[str, Any]] = []
    for picked in batches:
        out += answer([prompts[i] for i in picked], [refs[i] for i in picked])
        (own if bar is None else bar).update(1)
    if own is not None:
        own.close()
    return in_order(out, order)


def _answerer(model, tokenizer, settings, use_generate) -> Callable[..., list]:
    """What answers one batch (its prompts, its references or none): `tasks.decode`, with the
    beginning the batch's prompts share encoded once, or `generate`."""
    from tasks import decode

    config = model.generation_config
    if use_generate or not decode.plain_greedy(config):
        return lambda batch, refs: _generate_batch(model, tokenizer, batch, refs, settings)
    stops, pad = decode.end_tokens(config), tokenizer.pad_token_id

    def answer(batch: list[list[int]], refs: list[list[int]]) -> list[tuple[str, Any]]:
        prefix = decode.encode_prefix(model, batch[0][: decode.shared_prefix(batch)])
        rests = [p[prefix.length :] for p in batch]
        tokens, scores = decode.answer_batch(
            model, prefix, rests, refs, settings.max_new_tokens, stops, pad
        )
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return [(t.strip(), s) for t, s in zip(texts, scores)]

    return answer


def system_turn(row: dict[str, Any]) -> str:
    """The row's system turn ("" for the template's default): rows that share it share the
    beginning of their prompts, which a batch encodes once."""
    first = row["messages"][0]
    return first["content"] if first["role"] == "system" else ""


def _generate_batch(model, tokenizer, prompts, refs, settings) -> list[tuple[str, Any]]:
    """transformers' `generate`, prefilled by the pass that scores the references."""
    import torch

    from tasks.decode import Prefix, layout

    ids, mask, width = layout(Prefix(0, None), prompts, refs, tokenizer.pad_token_id, model.device)
    scores, cache = [None] * len(prompts), None
    if any(refs):
        scores, cache = _reference_scores(model, ids, mask, width)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids[:, :width],
            attention_mask=mask[:, :width],
            cache=cache,
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [(a.strip(), s) for a, s in zip(answers, scores)]


def _reference_scores(model, ids, mask, width) -> tuple[list[tuple[float, int]], Any]:
    """(summed NLL, tokens) of the references after column `width`, and the pass's cache cut
    back to all but the prompt's last token (which generation feeds to start decoding)."""
    import torch

    from tasks.decode import positions, reference_scores

    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask, ids),
            use_cache=True,
            logits_to_keep=ids.shape[1] - width + 1,
        )
        scores = reference_scores(out.logits, ids, mask, width)
    out.cache.crop(-(ids.shape[1] - width + 1))  # a negative count: tokens removed
    return scores, out.cache


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _reference_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The last answer's tokens (with its end of turn) as training tokenises them."""
    encoded = encode_chat(tokenizer, messages, 512)
    labels = encoded["labels"]
    start = len(labels)
    while start and labels[start - 1] != IGNORE:
        start -= 1
    return encoded["input_ids"][start:]


def batch_order(keys: list[tuple[int, ...]], grouped: bool = True) -> list[int]:
    """The order rows are batched in: sorted by their length keys (stable), so like-length
    rows share a batch, or the rows' own order when not `grouped`."""
    return sorted(range(len(keys)), key=keys.__getitem__) if grouped else list(range(len(keys)))


def in_order(values: list[Any], order: list[int]) -> list[Any]:
    """`values[k]` belongs to row `order[k]`: back in the rows' own order."""
    out: list[Any] = [None] * len(values)
    for k, i in enumerate(order):
        out[i] = values[k]
    return out
