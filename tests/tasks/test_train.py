import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from freshtune.errors import AdapterMismatch
from tasks.models import load_causal_lm, load_tokenizer
from tasks.train import IGNORE, check_adapter_fits, encode_chat, train_adapter


def _rows(n: int = 16) -> list[dict]:
    return [
        {
            "id": str(i),
            "messages": [
                {"role": "system", "content": "You are the support assistant."},
                {"role": "user", "content": f"How much does plan {i} cost?"},
                {"role": "assistant", "content": f"Plan {i} costs ${30 + i} per month."},
            ],
        }
        for i in range(n)
    ]


def test_only_assistant_tokens_carry_labels(tiny_model: Path):
    tokenizer = load_tokenizer(str(tiny_model))
    encoded = encode_chat(tokenizer, _rows(1)[0]["messages"], max_length=200)
    trained = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE]
    assert tokenizer.decode(trained) == "Plan 0 costs $30 per month.<|im_end|>\n"
    full = tokenizer.apply_chat_template(_rows(1)[0]["messages"], tokenize=False)
    assert tokenizer.decode(encoded["input_ids"]) == full


def test_an_open_answer_trains_no_end_of_turn(tiny_model: Path):
    tokenizer = load_tokenizer(str(tiny_model))
    messages = _rows(1)[0]["messages"]
    encoded = encode_chat(tokenizer, messages, max_length=200, open_end=True)
    trained = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE]
    assert tokenizer.decode(trained) == "Plan 0 costs $30 per month."
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(encoded["input_ids"]) == prompt + messages[-1]["content"]


def test_truncation_keeps_labels_aligned(tiny_model: Path):
    tokenizer = load_tokenizer(str(tiny_model))
    encoded = encode_chat(tokenizer, _rows(1)[0]["messages"], max_length=10)
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == 10


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory) -> Path:
    from freshtune.config import TrainSettings

    settings = TrainSettings(
        epochs=2,
        learning_rate=5e-3,
        batch_size=4,
        max_length=64,
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
    )
    out = tmp_path_factory.mktemp("adapters") / "first"
    return train_adapter(str(tiny_model), _rows(), settings, out, seed=0).adapter_dir


def test_adapter_moved_and_base_did_not(tiny_model: Path, trained: Path):
    from peft import PeftModel

    weights = load_file(str(trained / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)  # lora_B starts at exactly zero
    base = load_causal_lm(str(tiny_model))
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(trained))
    for name, value in model.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, reference[clean]), name
    assert torch.equal(
        load_file(str(tiny_model / "model.safetensors"))["model.norm.weight"],
        reference["model.norm.weight"],
    )


def test_warm_start_continues_from_the_parent(tiny_model: Path, trained: Path, tmp_path: Path):
    from freshtune.config import TrainSettings

    # With a vanishing learning rate the child must stay at the parent, not restart at zero.
    settings = TrainSettings(
        epochs=1,
        learning_rate=1e-9,
        batch_size=4,
        max_length=64,
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
    )
    child = train_adapter(str(tiny_model), _rows(8), settings, tmp_path / "child", parent=trained)
    parent_w = load_file(str(trained / "adapter_model.safetensors"))
    child_w = load_file(str(child.adapter_dir / "adapter_model.safetensors"))
    assert parent_w.keys() == child_w.keys()
    for key in parent_w:
        assert torch.allclose(parent_w[key], child_w[key], atol=1e-5), key
    assert child.parent_dir == trained


def test_rerun_returns_the_committed_adapter_without_training(tiny_model: Path, trained: Path):
    from freshtune.config import TrainSettings

    before = (trained / "adapter_model.safetensors").stat().st_mtime_ns
    result = train_adapter(str(tiny_model), [], TrainSettings(), trained)
    assert result.adapter_dir == trained and result.steps > 0
    assert (trained / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_an_adapter_missing_keys_is_an_error(tiny_model: Path, trained: Path, tmp_path: Path):
    from peft import PeftModel

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((trained / "adapter_config.json").read_text())
    weights = load_file(str(trained / "adapter_model.safetensors"))
    save_file(dict(list(weights.items())[1:]), str(broken / "adapter_model.safetensors"))
    model = PeftModel.from_pretrained(load_causal_lm(str(tiny_model)), str(broken))
    with pytest.raises(AdapterMismatch, match="1 missing keys"):
        check_adapter_fits(model, broken)


def test_padding_free_batches_give_the_padded_loss(tiny_model: Path):
    from tasks.train import build_dataset, collate, data_collator

    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model))
    rows = _rows(4)
    for i, row in enumerate(rows):  # lengths differ, so the padded batch really pads
        row["messages"][-1]["content"] += " Thanks for asking." * i
    features = build_dataset(tokenizer, rows, max_length=96).to_list()
    flatten, flat = data_collator(model, tokenizer, padding_free=True)
    assert flat and model.config._attn_implementation == "sdpa"
    flat_batch, padded_batch = flatten(features), collate(tokenizer.pad_token_id)(features)
    assert flat_batch["input_ids"].shape[0] == 1 and "attention_mask" not in flat_batch
    assert flat_batch["input_ids"].numel() < padded_batch["input_ids"].numel()
    with torch.no_grad():
        flat_loss = model(**flat_batch).loss
        padded_loss = model(**padded_batch).loss
    assert torch.allclose(flat_loss, padded_loss, atol=1e-5), (flat_loss, padded_loss)
    # Logits only where labels are trained: fewer of them, the same loss.
    assert flat_batch["logits_to_keep"].numel() < flat_batch["input_ids"].numel() / 2
    with torch.no_grad():
        kept = model(**flat_batch).logits.shape[1]
    assert kept == flat_batch["logits_to_keep"].numel()
    # Without boundaries in position_ids, rows would attend to each other: the loss changes.
    del flat_batch["position_ids"]
    with torch.no_grad():
        assert not torch.allclose(model(**flat_batch).loss, padded_loss, atol=1e-3)


def _padded_batch(tiny_model: Path) -> tuple[Any, Any, list[dict]]:
    """The tiny model, its tokenizer and 4 encoded rows whose answers differ in length."""
    from tasks.train import build_dataset

    tokenizer = load_tokenizer(str(tiny_model))
    rows = _rows(4)
    for i, row in enumerate(rows):  # answers of different lengths: the batch pads
        row["messages"][-1]["content"] += " Thanks for asking." * i
    features = build_dataset(tokenizer, rows, max_length=96).to_list()
    return load_causal_lm(str(tiny_model)), tokenizer, features


def test_padded_batches_compute_logits_from_the_first_trained_position(tiny_model: Path):
    from tasks.train import collate, data_collator

    model, tokenizer, features = _padded_batch(tiny_model)
    keep, flat = data_collator(model, tokenizer, padding_free=False)
    everything, _ = data_collator(model, tokenizer, padding_free=False, all_logits=True)
    assert not flat and everything(features).keys() == collate(0)(features).keys()
    kept, full = keep(features), everything(features)
    width = full["input_ids"].shape[1]
    assert 0 < kept["logits_to_keep"] < width / 2  # the prompts are most of a row

    def loss_and_grads(batch):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return out, grads

    (ours, ours_grads), (theirs, theirs_grads) = loss_and_grads(kept), loss_and_grads(full)
    assert ours.logits.shape[1] == kept["logits_to_keep"] and theirs.logits.shape[1] == width
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-6), (ours.loss, theirs.loss)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours_grads, theirs_grads))
    # The window starts at a trained label: one position shorter drops it, and the loss moves.
    assert (kept["shift_labels"][:, 0] != IGNORE).any()
    short = {
        **kept,
        "logits_to_keep": kept["logits_to_keep"] - 1,
        "shift_labels": kept["shift_labels"][:, 1:].contiguous(),
    }
    assert not torch.allclose(model(**short).loss, theirs.loss, atol=1e-3)


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_batch_computes_the_prompt_prefix_its_rows_share_once(tiny_model: Path):
    from tasks.train import after_prefix, data_collator

    model, tokenizer, features = _padded_batch(tiny_model)
    shared, _ = data_collator(model, tokenizer, padding_free=False, share_prefix=True)
    everything, _ = data_collator(model, tokenizer, padding_free=False, all_logits=True)
    batch = shared(features)
    length = batch.pop("shared_prefix")
    ids = batch["input_ids"]
    # The system turn and "How much does plan" are common; the plan's number is not.
    assert (ids[:, :length] == ids[0, :length]).all() and len(set(ids[:, length].tolist())) > 1
    assert length <= ids.shape[1] - batch["logits_to_keep"]  # no kept logit lies in the prefix

    ours_loss, ours = _loss_and_grads(model, after_prefix(model, batch, length))
    full_loss, full = _loss_and_grads(model, everything(features))
    assert torch.allclose(ours_loss, full_loss, atol=1e-6), (ours_loss, full_loss)
    assert len(ours) == len(full)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, full))
    # Rows attend to the prefix at its own positions: one column less cached is another loss.
    shifted = {**batch, "attention_mask": batch["attention_mask"][:, 1:]}
    moved = after_prefix(model, {**shifted, "input_ids": ids[:, 1:]}, length - 1)
    assert not torch.allclose(model(**moved).loss, full_loss, atol=1e-3)


def test_one_row_or_nothing_in_common_shares_no_prefix(tiny_model: Path):
    from tasks.train import build_dataset, data_collator

    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model))
    shared, _ = data_collator(model, tokenizer, padding_free=False, share_prefix=True)
    rows = _rows(2)
    rows[1]["messages"][0]["content"] = "Answer briefly."  # another system turn
    one, two = (build_dataset(tokenizer, r, max_length=96).to_list() for r in (rows[:1], rows))
    assert "shared_prefix" not in shared(one)
    differs = shared(two)
    assert differs.get("shared_prefix", 0) < len(tokenizer("<|im_start|>system\nYou")["input_ids"])


def test_batches_that_share_their_prefix_hold_rows_of_one_system_turn(tiny_model, tmp_path):
    from freshtune.config import TrainSettings
    from tasks.train import cycle_dataset, cycle_trainer, training_args

    tokenizer = load_tokenizer(str(tiny_model))
    model = load_causal_lm(str(tiny_model))
    rows = _rows(24) + _rows(24)
    for i, row in enumerate(rows):  # two turns of one length, answers of several
        row["messages"][-1]["content"] += " Thanks for asking." * (i % 5)
        if i >= 24:
            row["messages"][0]["content"] = "You are the sales assistant."
    turn = [r["messages"][0]["content"] for r in rows]
    settings = TrainSettings(batch_size=4, max_length=96)

    def batches(share: bool) -> list[list[int]]:
        torch.manual_seed(0)
        dataset, run, sampling = cycle_dataset(tokenizer, rows, settings, 0, False, share)
        assert len(dataset) == len(rows)  # in order: row i's turn is rows[i]'s
        args = training_args(run, tmp_path / str(share), 0, sampling)
        trainer = cycle_trainer(settings)(model=model, args=args, train_dataset=dataset)
        order = list(trainer._get_train_sampler())
        assert sorted(order) == list(range(len(rows)))  # every row once an epoch
        return [order[i : i + 4] for i in range(0, len(order), 4)]

    def mixed(batches: list[list[int]]) -> int:
        return sum(len({turn[i] for i in batch}) > 1 for batch in batches)

    grouped, plain = batches(True), batches(False)
    assert mixed(grouped) == 0 < mixed(plain)
    # The batches come in random order, not one turn's after the other's.
    assert sum(turn[a[0]] != turn[b[0]] for a, b in itertools.pairwise(grouped)) > 2
    # Rows a turn leaves over share the last batches: 25 + 23 rows, one of them mixed.
    rows[24]["messages"][0]["content"] = rows[0]["messages"][0]["content"]
    turn = [r["messages"][0]["content"] for r in rows]
    grouped = batches(True)
    assert mixed(grouped) == 1 and mixed(grouped[:-1]) == 0


def test_a_cycle_that_shares_prefixes_trains_every_batch_past_them(
    tiny_model, tmp_path, monkeypatch
):
    import tasks.train
    from freshtune.config import TrainSettings

    shared: list[int] = []
    real = tasks.train.after_prefix
    monkeypatch.setattr(
        tasks.train, "after_prefix", lambda m, inputs, n: shared.append(n) or real(m, inputs, n)
    )
    rows = _rows(8) + _rows(8)
    for i, row in enumerate(rows[8:]):
        row["id"], row["messages"][0]["content"] = f"s{i}", "You are the sales assistant."
    settings = TrainSettings(
        epochs=1, learning_rate=5e-3, batch_size=4, max_length=64, lora={"r": 4, "alpha": 8}
    )
    on = settings.model_copy(update={"share_prompt_prefix": True})
    fit = train_adapter(str(tiny_model), rows, on, tmp_path / "shared", seed=0)
    plain = train_adapter(str(tiny_model), rows, settings, tmp_path / "plain", seed=0)
    assert len(shared) == fit.steps == plain.steps == 4  # every batch, each of one turn
    system = len(load_tokenizer(str(tiny_model))("You are the sales assistant.")["input_ids"])
    assert min(shared) > system
    weights = [
        fit.adapter_dir / "adapter_model.safetensors",
        plain.adapter_dir / "adapter_model.safetensors",
    ]
    ours, theirs = (load_file(str(w)) for w in weights)
    assert ours.keys() == theirs.keys()
    assert all(torch.isfinite(v).all() for v in ours.values())
    assert abs(fit.loss - plain.loss) < 0.25 * plain.loss  # the same rows, in another order


def test_prefix_sharing_is_refused_where_it_cannot_run():
    from pydantic import ValidationError

    from freshtune.config import TrainSettings

    assert TrainSettings(share_prompt_prefix=True).share_prompt_prefix
    for clash in ({"gradient_checkpointing": True}, {"processes": 2}, {"padding_free": True}):
        with pytest.raises(ValidationError, match=f"turn off train.{next(iter(clash))}"):
            TrainSettings(share_prompt_prefix=True, **clash)
    TrainSettings(processes=2)  # off, nothing clashes


def test_a_changed_runtime_setting_keeps_the_adapter_key():
    from freshtune.config import TrainSettings
    from tasks.train import adapter_key

    key = adapter_key("base", TrainSettings(), "mix", None, 0, True)
    runtime = TrainSettings(save_steps=5, work_pool="gpu")
    assert key == adapter_key("base", runtime, "mix", None, 0, True)
    assert key != adapter_key("base", TrainSettings(mode="fresh"), "mix", None, 0, True)


def test_replay_passes_key_only_mixes_that_replay(tiny_config):
    from tasks.mix import TrainingMix
    from tasks.train import adapter_dir

    # A cumulative mix counts its earlier rows as replay_rows but trains them every epoch.
    rows = [{"drop": "d", "id": str(i)} for i in range(4)]
    once, every = tiny_config("train.replay_passes=1"), tiny_config()
    baseline = TrainingMix(rows, new_rows=2, replay_rows=2, drops=["d"], mode="cumulative")
    assert adapter_dir(baseline, None, once) == adapter_dir(baseline, None, every)
    marked = [{**r, "origin": "replay" if i > 1 else "new"} for i, r in enumerate(rows)]
    replaying = TrainingMix(marked, new_rows=2, replay_rows=2, drops=["d"])
    assert adapter_dir(replaying, None, once) != adapter_dir(replaying, None, every)


def test_key_follows_the_rows_and_epochs_trained_not_the_settings_that_chose_them(tiny_config):
    from tasks.mix import TrainingMix
    from tasks.train import adapter_dir

    rows = [{"drop": "d", "id": str(i)} for i in range(4)]
    mix = TrainingMix(rows, new_rows=4, replay_rows=0, drops=["d"])
    plain, ratio = tiny_config(), tiny_config("train.replay_ratio=3")
    shorter = tiny_config("train.continue_epochs=1")
    # Month 1 (no parent) trains the same rows for `epochs` whatever the replay settings.
    assert adapter_dir(mix, None, plain) == adapter_dir(mix, None, ratio)
    assert adapter_dir(mix, None, plain) == adapter_dir(mix, None, shorter)
    parent = plain.paths.adapters / "champion"
    assert adapter_dir(mix, parent, plain) != adapter_dir(mix, parent, shorter)
    same = tiny_config(f"train.continue_epochs={plain.train.epochs}")
    assert adapter_dir(mix, parent, plain) == adapter_dir(mix, parent, same)
    gentle = tiny_config("train.continue_learning_rate=1e-5")
    assert adapter_dir(mix, None, plain) == adapter_dir(mix, None, gentle)
    assert adapter_dir(mix, parent, plain) != adapter_dir(mix, parent, gentle)


def test_continue_epochs_shorten_only_a_cycle_that_continues(
    tiny_model: Path, trained: Path, tmp_path: Path
):
    from freshtune.config import TrainSettings

    settings = TrainSettings(
        epochs=2, continue_epochs=1, batch_size=4, max_length=64, lora={"r": 4, "alpha": 8}
    )
    fresh = train_adapter(str(tiny_model), _rows(8), settings, tmp_path / "fresh", seed=0)
    child = train_adapter(
        str(tiny_model), _rows(8), settings, tmp_path / "child", parent=trained, seed=0
    )
    assert (fresh.steps, child.steps) == (4, 2)
    assert child.tokens * 2 == fresh.tokens


def test_continue_learning_rate_sets_how_far_a_continuing_cycle_moves(
    tiny_model: Path, trained: Path, tmp_path: Path
):
    from freshtune.config import TrainSettings

    parent = load_file(str(trained / "adapter_model.safetensors"))
    settings = TrainSettings(
        epochs=1, learning_rate=5e-3, batch_size=4, max_length=64, lora={"r": 4, "alpha": 8}
    )
    gentle = settings.model_copy(update={"continue_learning_rate": 5e-5})

    def moved(s: TrainSettings, name: str) -> float:
        fit = train_adapter(str(tiny_model), _rows(8), s, tmp_path / name, parent=trained, seed=0)
        child = load_file(str(fit.adapter_dir / "adapter_model.safetensors"))
        return sum((child[k] - parent[k]).abs().sum().item() for k in parent)

    assert moved(gentle, "gentle") * 10 < moved(settings, "full")
    # A cycle without a parent trains at learning_rate whatever continue_learning_rate says.
    first = [
        train_adapter(str(tiny_model), _rows(8), s, tmp_path / n, seed=0)
        for s, n in ((settings, "a"), (gentle, "b"))
    ]
    a, b = (load_file(str(f.adapter_dir / "adapter_model.safetensors")) for f in first)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_replay_passes_train_replayed_rows_once(tiny_model: Path, tmp_path: Path):
    from freshtune.config import TrainSettings

    rows = [{**r, "origin": "new" if i < 8 else "replay"} for i, r in enumerate(_rows())]
    settings = TrainSettings(epochs=3, batch_size=4, max_length=64, lora={"r": 4, "alpha": 8})
    every = train_adapter(str(tiny_model), rows, settings, tmp_path / "every", seed=0)
    once_settings = settings.model_copy(update={"replay_passes": 1.0})
    once = train_adapter(str(tiny_model), rows, once_settings, tmp_path / "once", seed=0)
    # 8 new rows x 3 epochs + 8 replayed rows once = 32 of every epoch's 48 rows.
    assert (every.steps, once.steps) == (12, 8)
    assert once.tokens * 48 == pytest.approx(every.tokens * 32, rel=0.05)
    weights = load_file(str(once.adapter_dir / "adapter_model.safetensors"))
    assert all(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k)


def test_bfloat16_asked_for_is_used_on_cpu_and_auto_stays_fp32(tiny_model: Path, tmp_path: Path):
    from freshtune.config import TrainSettings
    from tasks.train import pick_precision

    if torch.cuda.is_available():
        pytest.skip("the CPU rule")
    assert pick_precision("auto") == {"use_cpu": True, "bf16": False, "tf32": False}
    assert pick_precision("bfloat16")["bf16"] and not pick_precision("float32")["bf16"]
    settings = TrainSettings(
        epochs=1, batch_size=4, max_length=64, lora={"r": 4, "alpha": 8}, dtype="bfloat16"
    )
    fit = train_adapter(str(tiny_model), _rows(8), settings, tmp_path / "bf16", seed=0)
    weights = load_file(str(fit.adapter_dir / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    # Autocast computes in bf16 and keeps fp32 master weights, which the adapter saves.
    assert lora_b and all(w.dtype == torch.float32 and w.abs().max() > 0 for w in lora_b)


def _divergence_from_base(tiny_model: Path, adapter: Path, text: str) -> float:
    """KL(base || adapter) of next-token predictions over a text no cycle trained on."""
    from peft import PeftModel

    tokenizer = load_tokenizer(str(tiny_model))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    model = PeftModel.from_pretrained(load_causal_lm(str(tiny_model)), str(adapter)).eval()
    with torch.no_grad():
        tuned = torch.log_softmax(model(input_ids=ids).logits, -1)
        with model.disable_adapter():
            base = torch.log_softmax(model(input_ids=ids).logits, -1)
    return float((base.exp() * (base - tuned)).sum(-1).mean())


def test_base_kl_keeps_untaught_predictions_near_the_base(tiny_model: Path, tmp_path: Path):
    from freshtune.config import TrainSettings

    settings = TrainSettings(
        epochs=3, learning_rate=1e-2, batch_size=4, max_length=64, lora={"r": 4, "alpha": 8}
    )
    free = train_adapter(str(tiny_model), _rows(8), settings, tmp_path / "free", seed=0)
    anchored = settings.model_copy(update={"base_kl": 50.0})
    held = train_adapter(str(tiny_model), _rows(8), anchored, tmp_path / "held", seed=0)
    text = "You are the support assistant. Is 5G coverage available in my area?"
    drift = {
        name: _divergence_from_base(tiny_model, fit.adapter_dir, text)
        for name, fit in (("free", free), ("held", held))
    }
    assert drift["held"] < 0.5 * drift["free"], drift


def test_two_trainings_in_one_process_train_one_after_the_other(
    tiny_model: Path, tmp_path: Path, monkeypatch
):
    """transformers keeps one accelerate state per process and every TrainingArguments resets
    it: a second Trainer being built while another trained broke the first in CI (two drops
    at once). The second is held just after its TrainingArguments until the first steps."""
    import threading

    import tasks.train
    from freshtune.config import TrainSettings

    settings = TrainSettings(
        epochs=2, batch_size=4, max_length=64, logging_steps=1, lora={"r": 4, "alpha": 8}
    )
    second_built, first_stepped = threading.Event(), threading.Event()
    real_probe = tasks.train.build_probe

    def probe_after_the_reset(*args):
        if threading.current_thread().name == "second":
            second_built.set()
            first_stepped.wait(3)
        return real_probe(*args)

    def first_sink(metrics: dict, step: int) -> None:
        if second_built.is_set():
            first_stepped.set()
        elif step == 1:
            second.start()
            second_built.wait(3)  # unless it waits for this training to end

    monkeypatch.setattr(tasks.train, "build_probe", probe_after_the_reset)
    results, errors = {}, []

    def train(name: str, sink) -> None:
        try:
            out = tmp_path / name
            results[name] = train_adapter(str(tiny_model), _rows(), settings, out, on_log=sink)
        except Exception as exc:
            errors.append(exc)

    first = threading.Thread(target=train, args=("first", first_sink), name="first")
    second = threading.Thread(target=train, args=("second", None), name="second")
    first.start()
    first.join(300)
    second.join(300)
    assert not errors, errors
    assert {name: r.steps for name, r in results.items()} == {"first": 8, "second": 8}


def test_asking_with_introductions_keys_the_adapter(tiny_config):
    from tasks.mix import TrainingMix
    from tasks.train import adapter_dir

    # The introductions change rows' words, not their ids (the mix digest).
    mix = TrainingMix([{"drop": "d", "id": str(i)} for i in range(4)], 4, 0, ["d"])
    plain, asked = tiny_config(), tiny_config("train.asker_share=0.25")
    assert adapter_dir(mix, None, plain) != adapter_dir(mix, None, asked)
    assert adapter_dir(mix, None, plain) == adapter_dir(
        mix, None, tiny_config("train.asker_share=0")
    )
