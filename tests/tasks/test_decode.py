"""Evaluation's own greedy decoding answers as transformers' `generate` does, for less work."""

from collections import Counter

import pytest

from tasks import decode
from tasks.chat import _prompt_ids, answer_and_score
from tests.helpers.rows import chat_row

SYSTEM = {"role": "system", "content": "You answer for Nimbus Mobile."}


def _rows() -> list[dict]:
    """Two system turns (the template's default and the domain's), prompts of unlike length."""
    rows = [
        chat_row(f"r{i}", q, "Plan 3 costs $30.", "eval")
        for i, q in enumerate(
            ["Hi", "How much is plan 3?", "What does the Horizon plan cost each month?",
             "Is roaming included in Europe and in Asia, and since when?"]
        )
    ]  # fmt: skip
    domain = [{**r, "id": r["id"] + "-d", "messages": [SYSTEM, *r["messages"]]} for r in rows]
    return rows + domain


@pytest.fixture
def tiny(tiny_config):
    from tasks.models import load_inference_model, load_tokenizer

    cfg = tiny_config("eval.max_new_tokens=8", "eval.batch_size=8")
    model, tokenizer = load_inference_model(cfg.base_model), load_tokenizer(cfg.base_model)
    return model, tokenizer, cfg.eval


def _ends_midway(model, tokenizer, rows, settings) -> None:
    """Make a token the random tiny model writes early in some answers, not all, an end token,
    so rows end at different steps (it never writes its real one)."""
    import torch

    written = Counter()
    for row in rows:
        prompt = torch.tensor([_prompt_ids(tokenizer, row["messages"][:-1])])
        out = model.generate(input_ids=prompt, max_new_tokens=settings.max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        written.update(set(out[0, prompt.shape[1] + 1 : prompt.shape[1] + 4].tolist()))
    common = [t for t, n in written.most_common() if n < len(rows)]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, common[0]]


def _alone(model, tokenizer, rows, settings) -> list[str]:
    one = settings.model_copy(update={"batch_size": 1})
    return [a for r in rows for a, _ in answer_and_score(model, tokenizer, [r], one, None,
                                                         use_generate=True)]  # fmt: skip


def test_answers_and_scores_are_generates_while_finished_rows_leave_the_batch(tiny):
    model, tokenizer, settings = tiny
    rows = _rows()
    _ends_midway(model, tokenizer, rows, settings)
    widths = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    ours = answer_and_score(model, tokenizer, rows, settings)
    hook.remove()
    theirs = answer_and_score(model, tokenizer, rows, settings, use_generate=True)

    assert (
        [a for a, _ in ours] == [a for a, _ in theirs] == _alone(model, tokenizer, rows, settings)
    )
    lengths = {len(tokenizer(a)["input_ids"]) for a, _ in ours}
    assert len(lengths) > 1  # the answers end at different steps...
    steps = [rows for rows, width in widths if width == 1]
    assert steps == sorted(steps, reverse=True) and steps[-1] < steps[0]  # ...and leave
    for (_, (nll, n)), (_, (nll2, n2)) in zip(ours, theirs):
        assert n == n2 > 0 and nll == pytest.approx(nll2, rel=1e-4)


def test_the_beginning_a_batch_shares_is_encoded_once_at_the_positions_it_has_alone(tiny):
    import torch

    model, tokenizer, _ = tiny
    prompts = [_prompt_ids(tokenizer, r["messages"][:-1]) for r in _rows()[4:]]
    shared = decode.shared_prefix(prompts)
    assert shared > 10 and len({tuple(p[:shared]) for p in prompts}) == 1
    assert decode.shared_prefix(prompts[:1]) == len(prompts[0]) - 1  # its last token stays
    assert decode.shared_prefix([[1, 2, 3], [4, 5]]) == 0

    prefix = decode.encode_prefix(model, prompts[0][:shared])
    rests = [p[shared:] for p in prompts]
    ids, mask, _ = decode.layout(prefix, rests, [[]] * len(rests), 2, model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=decode.positions(mask, ids),
                    cache=decode._batch_cache(prefix, len(rests)))  # fmt: skip
        for row, prompt in enumerate(prompts):
            alone = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            assert torch.allclose(out.logits[row, -1], alone, atol=1e-4)


def test_a_generation_config_that_shapes_greedy_answers_is_left_to_generate(tiny):
    model, tokenizer, settings = tiny
    assert decode.plain_greedy(model.generation_config)
    rows = _rows()
    model.generation_config.repetition_penalty = 5.0
    assert not decode.plain_greedy(model.generation_config)
    penalised = [a for a, _ in answer_and_score(model, tokenizer, rows, settings)]
    assert penalised == _alone(model, tokenizer, rows, settings)
    model.generation_config.repetition_penalty = 1.0
    assert penalised != [a for a, _ in answer_and_score(model, tokenizer, rows, settings)]
