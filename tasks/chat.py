"""Chat conversations as token ids for training, and greedy answers to them for evaluation.

Both sides of the loop tokenise a conversation the same way: the prompt the model is trained
under is the prompt it answers at evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from freshtune import console
from freshtune.config import EvalSettings

IGNORE = -100


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


def collate(pad_id: int, left: bool = False) -> Callable[[list[dict]], dict]:
    """Pad a batch to its longest row, on the right (training) or the left (so that every
    answer ends the sequence); padding is masked out of the loss."""
    import torch

    def _collate(batch: list[dict]) -> dict:
        width = max(len(row["input_ids"]) for row in batch)

        def padded(values: list[int], fill: int) -> list[int]:
            pad = [fill] * (width - len(values))
            return pad + values if left else values + pad

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
    own. `grouped`: batch rows with reference answers of like length together (a batch
    decodes until its longest answer ends, so one long answer among short ones makes the
    whole batch pay for it), then put the answers back in order."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            r["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    order = (
        by_length([(len(r["messages"][-1]["content"]), len(p)) for r, p in zip(rows, prompts)])
        if grouped
        else list(range(len(rows)))
    )
    prompts = [prompts[i] for i in order]
    answers: list[str] = []
    batches = range(0, len(prompts), settings.batch_size)
    # A quiet terminal shows the bars of whole stages only (the training-target probe's
    # answers are generated inside training's bar).
    own = (
        None
        if bar is not None
        else tqdm(total=len(batches), desc="generating", leave=False, disable=console.quiet())
    )
    for start in batches:
        batch = tokenizer(
            prompts[start : start + settings.batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        (own if bar is None else bar).update(1)
    if own is not None:
        own.close()
    return in_order([a.strip() for a in answers], order)


def by_length(keys: list[tuple[int, ...]]) -> list[int]:
    """Indices sorted by their keys (stable): batches of like-length rows."""
    return sorted(range(len(keys)), key=keys.__getitem__)


def in_order(values: list[Any], order: list[int]) -> list[Any]:
    """`values[k]` belongs to row `order[k]`: back in the rows' own order."""
    out: list[Any] = [None] * len(values)
    for k, i in enumerate(order):
        out[i] = values[k]
    return out


def reference_nll(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    settings: EvalSettings,
    grouped: bool = True,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, tokens) of each reference answer: for perplexity.

    Rows are padded on the left, so every answer ends the sequence and the vocabulary
    projection runs over the answers' positions only (`logits_to_keep`): over whole rows it
    was half of this pass's time (bench/eval_speed.py's questions, SmolLM2: 15.8 s vs 7.5 s)."""
    import torch

    encoded = [encode_chat(tokenizer, r["messages"], 512) for r in rows]
    # Like-length answers batched together: the projection runs from the batch's longest one.
    keys = [(_answer_tokens(e), len(e["input_ids"])) if grouped else () for e in encoded]
    order = by_length(keys)
    encoded = [encoded[i] for i in order]
    pad = collate(tokenizer.pad_token_id, left=True)
    out: list[tuple[float, int]] = []
    for start in range(0, len(encoded), settings.batch_size):
        batch = pad(encoded[start : start + settings.batch_size])
        ids, labels = batch["input_ids"], batch["labels"]
        # Logits from the position before the earliest answer token of the batch onwards.
        first = int((labels != IGNORE).int().argmax(dim=1).min())
        keep = ids.shape[1] - max(first - 1, 0)
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(model.device),
                attention_mask=batch["attention_mask"].to(model.device),
                logits_to_keep=keep,
            ).logits[:, :-1]
        target = labels[:, ids.shape[1] - keep + 1 :].to(logits.device)
        losses = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
        )
        counts = (target != IGNORE).sum(dim=1)
        out += [(float(s), int(c)) for s, c in zip(losses.sum(dim=1), counts)]
    return in_order(out, order)


def _answer_tokens(encoded: dict) -> int:
    return sum(label != IGNORE for label in encoded["labels"])
