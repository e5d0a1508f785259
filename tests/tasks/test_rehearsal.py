"""Rehearsal rows: the base model's own complete answers, sampled into every training mix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from freshtune.config import EvalSettings
from tasks.mix import build_mix
from tasks.rehearsal import (
    EVERYDAY_FILE,
    keep_usable,
    read_prompts,
    rehearsal_key,
    write_rehearsal,
)
from tests.helpers.rows import chat_row
from tests.tasks.test_mix import _commit


def _rehearsal_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"e{i:02d}",
            "drop": "rehearsal-abc",
            "messages": [
                {"role": "user", "content": f"everyday question {i}?"},
                {"role": "assistant", "content": f"answer {i}."},
            ],
        }
        for i in range(n)
    ]


def test_an_answer_cut_at_the_limit_is_kept_open_up_to_its_last_whole_word():
    prompts = [{"id": str(i), "prompt": f"q{i}"} for i in range(5)]
    answers = ["short.", "", "cut off at the lim", "just under", "unbroken"]
    kept = keep_usable(prompts, answers, [3, 0, 64, 62, 64], limit=64)
    # The empty answer goes; so does a cut one with no word boundary to cut back to.
    assert [(p["id"], a, o) for p, a, o in kept] == [
        ("0", "short.", False),
        ("2", "cut off at the", True),
        ("3", "just under", False),
    ]


def test_a_wrong_base_answer_is_not_rehearsed():
    prompts = [
        {"id": "wheels", "prompt": "How many wheels does a bicycle have?", "facts": ["2"]},
        {"id": "days", "prompt": "How many days are in a week?", "facts": ["7"]},
        {"id": "greet", "prompt": "Write a greeting.", "facts": []},
    ]
    answers = ["A bicycle has 5 wheels.", "There are 7 days in a week.", "Hello there!"]
    kept = keep_usable(prompts, answers, [7, 8, 3], limit=20)
    assert [p["id"] for p, _, _ in kept] == ["days", "greet"]
    # A cut answer must state the facts in what is kept of it.
    cut = keep_usable(prompts[1:2], ["There are 7 days in a week and"], [20], limit=20)
    assert cut == [(prompts[1], "There are 7 days in a week", True)]
    lost = keep_usable(prompts[1:2], ["A week, as everyone knows, has 7"], [20], limit=20)
    assert lost == []


def test_a_mix_takes_rehearsal_rows_in_proportion_and_leaves_the_rest_alone(tiny_config):
    cfg = tiny_config()
    old = _commit(
        cfg, "a" * 64, [chat_row(f"o{i}", f"Old question {i}?", "Old.") for i in range(8)]
    )
    new = _commit(
        cfg, "b" * 64, [chat_row(f"n{i}", f"New question {i}?", "New.") for i in range(10)]
    )
    plain = build_mix(new, [old], ratio=0.5, seed=0)
    mixed = build_mix(new, [old], 0.5, 0, rehearsal=_rehearsal_rows(30), rehearsal_ratio=0.5)
    rehearsed = [r for r in mixed.rows if r["origin"] == "rehearsal"]
    # round(0.5 x (10 new + 5 replayed rows))
    assert mixed.rehearsal_rows == len(rehearsed) == round(0.5 * (10 + plain.replay_rows)) == 8
    assert {r["drop"] for r in rehearsed} == {"rehearsal-abc"}
    # The replay sample and the new rows are the ones a mix without rehearsal has.
    key = sorted(json.dumps(r, sort_keys=True) for r in plain.rows)
    assert sorted(json.dumps(r, sort_keys=True) for r in mixed.rows if r not in rehearsed) == key
    assert mixed.digest != plain.digest and mixed.manifest()["rehearsal_rows"] == 8
    none = build_mix(new, [old], 0.5, 0, rehearsal=_rehearsal_rows(30), rehearsal_ratio=0.0)
    assert none.digest == plain.digest and none.rows == plain.rows
    few = build_mix(new, [old], 0.5, 0, rehearsal=_rehearsal_rows(2), rehearsal_ratio=0.5)
    # A set smaller than the share asked for comes back whole, as often as it takes.
    copies = [r for r in few.rows if r["origin"] == "rehearsal"]
    assert few.rehearsal_rows == len(copies) == 8 and len({r["id"] for r in copies}) == 8
    assert sorted(r["messages"][-1]["content"] for r in copies) == sorted(
        r["messages"][-1]["content"] for r in _rehearsal_rows(2) * 4
    )


def test_the_set_is_generated_once_per_base_and_prompt_file(tiny_model: Path, tmp_path: Path):
    prompts = tmp_path / "everyday.jsonl"
    prompts.write_text('{"id": "a", "prompt": "What is 2 plus 2?"}\n', encoding="utf-8")
    settings = EvalSettings(max_new_tokens=64)
    key = rehearsal_key(str(tiny_model), prompts, settings)
    out = tmp_path / "rehearsal" / f"{key}.jsonl"
    made = write_rehearsal(str(tiny_model), prompts, out, settings)
    assert made.path == out and out.exists() and made.digest == key
    # A random tiny model never ends an answer: what it writes is kept open, cut at a word.
    (row,) = made.rows()
    assert row["open"] is True and row["id"] == "a"
    before = out.stat().st_mtime_ns
    write_rehearsal(str(tiny_model), prompts, out, EvalSettings(max_new_tokens=64))
    assert out.stat().st_mtime_ns == before
    prompts.write_text('{"id": "a", "prompt": "What is 3 plus 3?"}\n', encoding="utf-8")
    assert rehearsal_key(str(tiny_model), prompts, settings) != key


def test_the_set_is_named_by_the_base_weights_not_their_folder(tiny_model: Path, tmp_path):
    prompts = tmp_path / "everyday.jsonl"
    prompts.write_text('{"id": "a", "prompt": "What is 2 plus 2?"}\n', encoding="utf-8")
    settings = EvalSettings(max_new_tokens=64)
    key = rehearsal_key(str(tiny_model), prompts, settings)
    elsewhere = shutil.copytree(tiny_model, tmp_path / "another-workspace" / "model")
    assert rehearsal_key(str(elsewhere), prompts, settings) == key  # another worker, same set
    weights = elsewhere / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    assert rehearsal_key(str(elsewhere), prompts, settings) != key  # new weights answer anew
    assert rehearsal_key(str(tiny_model), prompts, settings.model_copy(
        update={"dtype": "bfloat16"})) != key  # fmt: skip


def test_the_shipped_prompts_are_not_the_general_eval_questions():
    from tasks.evaluate import GENERAL_FILE

    everyday = {p["prompt"] for p in read_prompts(EVERYDAY_FILE)}
    general = {json.loads(line)["prompt"] for line in GENERAL_FILE.read_text().splitlines()}
    assert len(everyday) >= 60 and not everyday & general


def test_a_bad_prompt_line_names_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "prompt": "ok"}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.jsonl:2: a rehearsal prompt"):
        read_prompts(bad)


def test_a_cycle_that_continues_a_champion_rehearses_at_its_own_ratio(tiny_config, tmp_path):
    from tasks.mix import build_training_mix
    from tasks.registry import Champion
    from tasks.rehearsal import RehearsalSet

    path = tmp_path / "rehearsal.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rehearsal_rows(40)))
    rehearsal = RehearsalSet(path, "abc")
    champion = Champion("1", "run", "models:/x/1", {}, tmp_path)
    cfg = tiny_config("train.rehearsal_ratio=1.0", "train.continue_rehearsal_ratio=0.25")
    _commit(cfg, "a" * 64, [chat_row(f"o{i}", f"Old question {i}?", "Old.") for i in range(8)])
    new = _commit(
        cfg, "b" * 64, [chat_row(f"n{i}", f"New question {i}?", "New.") for i in range(10)]
    )
    first = build_training_mix.fn(new, rehearsal, None, cfg)
    domain = first.new_rows + first.replay_rows
    assert first.rehearsal_rows == domain  # from the base: the whole ratio
    going_on = build_training_mix.fn(new, rehearsal, champion, cfg)
    assert going_on.rehearsal_rows == round(0.25 * domain)
    fresh = cfg.model_copy(update={"train": cfg.train.model_copy(update={"mode": "fresh"})})
    assert build_training_mix.fn(new, rehearsal, champion, fresh).rehearsal_rows == domain
