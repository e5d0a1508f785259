"""Evaluation reuses what it already generated: by model digest and question digest."""

import json
import shutil

from safetensors.torch import load_file, save_file

from tasks.evalcache import question_digest
from tasks.evaluate import adapted_model, evaluate_models
from tasks.train import train_adapter
from tests.helpers.rows import chat_row


def _rows(n: int, split: str) -> list[dict]:
    return [
        chat_row(
            f"{split}-{i}", f"How much does plan {i} cost?", f"Plan {i} costs ${30 + i}.", split
        )
        for i in range(n)
    ]


def _slices(n: int = 6) -> dict[str, list[dict]]:
    rows = _rows(n, "eval")
    return {"current": rows[: n // 2], "general": rows[n // 2 :]}


def _adapter(tiny_config, tmp_path):
    cfg = tiny_config("train.epochs=1")
    out = tmp_path / "adapter"
    train_adapter(cfg.base_model, _rows(8, "train"), cfg.train, out, seed=0)
    return cfg, out


def _tamper(cache_dir, row, settings, text):
    """Overwrite one cached answer in every model's file: a reused answer shows the text."""
    key = question_digest(row, settings)
    for path in cache_dir.glob("*.json"):
        entries = json.loads(path.read_text())
        entries[key][0] = text
        path.write_text(json.dumps(entries))


def test_a_second_evaluation_reuses_the_cached_answers(tiny_config, tmp_path):
    cfg, adapter = _adapter(tiny_config, tmp_path)
    slices, cache = _slices(), tmp_path / "cache"
    first = evaluate_models(cfg.base_model, {"candidate": adapter}, slices, cfg.eval, cache)
    assert len(list(cache.glob("*.json"))) == 2  # one file per model: base and candidate

    row = slices["current"][0]
    _tamper(cache, row, cfg.eval, "planted answer")
    again = evaluate_models(cfg.base_model, {"candidate": adapter}, slices, cfg.eval, cache)
    for model in ("base", "candidate"):
        assert again["current"][model].samples[0]["answer"] == "planted answer"
        assert again["general"][model].samples == first["general"][model].samples


def test_new_adapter_weights_or_a_new_question_are_generated_afresh(tiny_config, tmp_path):
    cfg, adapter = _adapter(tiny_config, tmp_path)
    slices, cache = _slices(), tmp_path / "cache"
    evaluate_models(cfg.base_model, {"candidate": adapter}, slices, cfg.eval, cache)
    row = slices["current"][0]
    _tamper(cache, row, cfg.eval, "planted answer")

    changed = tmp_path / "changed"
    shutil.copytree(adapter, changed)
    weights = load_file(str(changed / "adapter_model.safetensors"))
    save_file({k: v * 1.5 for k, v in weights.items()}, str(changed / "adapter_model.safetensors"))
    reworded = {
        **row,
        "messages": [
            {"role": "user", "content": "Reworded: what plan is it?"},
            row["messages"][-1],
        ],
    }
    again = evaluate_models(
        cfg.base_model, {"candidate": changed}, {"current": [row, reworded]}, cfg.eval, cache
    )
    assert again["current"]["candidate"].samples[0]["answer"] != "planted answer"
    assert again["current"]["base"].samples[0]["answer"] == "planted answer"  # base unchanged
    assert again["current"]["base"].samples[1]["answer"] != "planted answer"
    assert len(list(cache.glob("*.json"))) == 3


def test_cached_scores_equal_uncached_ones(tiny_config, tmp_path):
    cfg, adapter = _adapter(tiny_config, tmp_path)
    slices = _slices()
    plain = evaluate_models(cfg.base_model, {"candidate": adapter}, slices, cfg.eval)
    cache = tmp_path / "cache"
    evaluate_models(cfg.base_model, {"candidate": adapter}, slices, cfg.eval, cache)
    cached = evaluate_models(cfg.base_model, {"candidate": adapter}, slices, cfg.eval, cache)
    for name in slices:
        for model in ("base", "candidate"):
            assert cached[name][model].metrics() == plain[name][model].metrics()
            assert cached[name][model].samples == plain[name][model].samples


def test_the_candidate_is_scored_as_the_merged_model_export_serves(tiny_config, tmp_path):
    from tasks.chat import generate_answers
    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.train import merged_with

    cfg, adapter = _adapter(tiny_config, tmp_path)
    rows = _rows(6, "eval")
    scored = evaluate_models(cfg.base_model, {"candidate": adapter}, {"current": rows}, cfg.eval)
    served = merged_with(load_causal_lm(cfg.base_model), adapter).eval()
    answers = generate_answers(served, load_tokenizer(cfg.base_model), rows, cfg.eval)
    assert [s["answer"] for s in scored["current"]["candidate"].samples] == answers
    base = [s["answer"] for s in scored["current"]["base"].samples]
    assert base != answers  # the adapter is in what was scored


def test_answers_batched_by_length_come_back_in_the_rows_order(tiny_config, tmp_path):
    """Grouping like-length answers into batches reorders the work, never the answers: each
    row gets the answer it gets alone."""
    from tasks.chat import batch_order, generate_answers
    from tasks.models import load_tokenizer

    cfg, adapter = _adapter(tiny_config, tmp_path)
    model = adapted_model(cfg.base_model, adapter)
    tokenizer = load_tokenizer(cfg.base_model)
    long = chat_row("long", "Which plans are there?", "Plan 1, plan 2 and plan 3. " * 4, "eval")
    rows = [long, *_rows(4, "eval"), {**long, "id": "long2"}]
    assert batch_order([(len(r["messages"][-1]["content"]),) for r in rows])[-2:] == [0, 5]
    pairs = cfg.eval.model_copy(update={"batch_size": 2})
    alone = cfg.eval.model_copy(update={"batch_size": 1})
    grouped = generate_answers(model, tokenizer, rows, pairs)
    assert grouped == [generate_answers(model, tokenizer, [r], alone)[0] for r in rows]
    assert grouped == generate_answers(model, tokenizer, rows, pairs, grouped=False)


def test_one_pass_scores_each_reference_and_answers_as_generation_alone(tiny_config):
    """The pass that scores the references is generation's prefill: each row's summed NLL is
    that of the row run alone, by the plain definition, and its answer is the one it gets
    alone or when generation encodes the prompt again."""
    import torch

    from tasks.chat import IGNORE, answer_and_score, encode_chat, generate_answers
    from tasks.models import load_inference_model, load_tokenizer

    cfg = tiny_config("eval.batch_size=2")
    model, tokenizer = load_inference_model(cfg.base_model), load_tokenizer(cfg.base_model)
    long = chat_row("long", "Which plans are there, and what does each cost?", "A " * 30, "eval")
    rows = [long, *_rows(3, "eval")]  # batched by answer length: the long one moves last
    scored = answer_and_score(model, tokenizer, rows, cfg.eval)

    alone = cfg.eval.model_copy(update={"batch_size": 1})
    answers = [a for a, _ in scored]
    assert answers == [generate_answers(model, tokenizer, [r], alone)[0] for r in rows]
    assert answers == [
        a for a, _ in answer_and_score(model, tokenizer, rows, cfg.eval, use_generate=True)
    ]
    for row, (_, (nll, tokens)) in zip(rows, scored):
        enc = encode_chat(tokenizer, row["messages"], 512)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0, :-1]
        labels = torch.tensor(enc["labels"][1:])
        plain = torch.nn.functional.cross_entropy(
            logits, labels, ignore_index=IGNORE, reduction="sum"
        )
        assert tokens == int((labels != IGNORE).sum()) > 0
        assert abs(nll - float(plain)) < 1e-3 * max(1.0, float(plain))


def test_the_scoring_pass_cut_back_to_the_prompt_is_generations_own_prefill(tiny_config):
    """Decoding from the scoring pass's cache gives the scores of generation's own prefill
    (to float rounding) in a batch of left-padded prompts: the cached keys carry the positions
    generation gives, and nothing of the references is left in the cache."""
    import torch

    from tasks.chat import _prompt_ids, _reference_ids, _reference_scores
    from tasks.decode import Prefix, layout
    from tasks.models import load_inference_model, load_tokenizer

    cfg = tiny_config()
    model, tokenizer = load_inference_model(cfg.base_model), load_tokenizer(cfg.base_model)
    long = chat_row("long", "Which plans are there, and what does each cost?", "A " * 30, "eval")
    messages = [r["messages"] for r in [long, *_rows(3, "eval")]]
    prompts = [_prompt_ids(tokenizer, m[:-1]) for m in messages]
    refs = [_reference_ids(tokenizer, m) for m in messages]
    ids, mask, width = layout(Prefix(0, None), prompts, refs, tokenizer.pad_token_id, "cpu")
    assert len(set(map(len, prompts))) > 1  # some prompts are padded

    def decode(cache):
        out = model.generate(
            input_ids=ids[:, :width], attention_mask=mask[:, :width], cache=cache,
            max_new_tokens=4, do_sample=False, output_scores=True,
            return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        return torch.stack(out.scores)

    _, cache = _reference_scores(model, ids, mask, width)
    assert cache.get_seq_length() == width - 1
    assert torch.allclose(decode(cache), decode(None), atol=1e-5)
