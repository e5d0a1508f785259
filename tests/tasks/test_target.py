"""Train to a target: a cycle stops when its own training questions are answered, or at the
budget; the probe never reads evaluation rows."""

from pathlib import Path

from freshtune.config import TrainSettings
from tasks.ingest import response_of
from tasks.metrics import recalled
from tasks.target import build_probe, hold_out_wordings
from tasks.train import adapter_key, train_adapter
from tests.helpers.rows import chat_row

SETTINGS = TrainSettings(
    learning_rate=5e-3, batch_size=4, max_length=64, warmup=0.0, lora={"r": 4, "alpha": 8}
)


def _rows(n: int = 8, origin: str = "new") -> list[dict]:
    """Rows with a short system turn: the template's default one would fill max_length."""
    system = {"role": "system", "content": "You are the support assistant."}
    return [{**row, "messages": [system, *row["messages"]]} for row in _plain_rows(n, origin)]


def _plain_rows(n: int, origin: str) -> list[dict]:
    return [
        {
            **chat_row(f"{origin}-{i}", f"Price of plan {i}?", f"Plan {i} costs ${40 + i}."),
            "origin": origin,
        }
        for i in range(n)
    ]


def test_recall_asks_for_the_facts_numbers_or_words_a_row_teaches():
    row = chat_row("1", "Price?", "The Comet plan costs $47 per month.")
    assert recalled("It is $47 a month.", row) and not recalled("It is $74.", row)
    assert recalled("Comet: $47 or $48", {**row, "facts": ["$47"]})
    words = chat_row("2", "Who?", "Our support team answers every day.")
    assert recalled("Our support team answers every day of the week.", words)
    assert not recalled("Please call us.", words)


def test_the_probe_samples_only_the_cycles_own_rows():
    rows = _rows(40) + _rows(30, "replay") + _rows(30, "rehearsal") + _rows(2, "review")
    settings = SETTINGS.model_copy(update={"target_recall": 0.9, "target_sample": 20})
    probe = build_probe(rows, settings, seed=0)
    assert len(probe.rows) == 20 and {r["origin"] for r in probe.rows} <= {"new", "review"}
    assert probe.rows == build_probe(rows, settings, seed=0).rows  # seeded
    assert build_probe(rows, SETTINGS, seed=0) is None  # no target: fixed epochs


def test_the_probe_asks_the_months_new_rows_first_and_corrections_too():
    settings = SETTINGS.model_copy(update={"target_recall": 0.9, "target_sample": 32})

    def origins(new: int, fixes: int) -> tuple[int, int]:
        picked = [
            r["origin"] for r in build_probe(_rows(new) + _rows(fixes, "review"), settings, 0).rows
        ]
        return picked.count("new"), picked.count("review")

    assert origins(21, 58) == (21, 11)  # every new row; corrections fill the rest
    assert origins(96, 43) == (24, 8)  # a quarter for corrections, not 10 of 32 by share
    assert origins(96, 3) == (29, 3)
    assert origins(0, 40) == (0, 32)  # a cycle of corrections only


def test_the_probe_asks_replayed_rows_only_when_told_to():
    rows = _rows(40) + _rows(30, "replay") + _rows(30, "rehearsal")
    settings = SETTINGS.model_copy(
        update={"target_recall": 0.9, "target_sample": 20, "target_replay_sample": 8}
    )
    origins = [r["origin"] for r in build_probe(rows, settings, seed=0).rows]
    assert origins.count("new") == 20 and origins.count("replay") == 8 and len(origins) == 28
    few = build_probe(_rows(40) + _rows(3, "replay"), settings, seed=0)
    assert [r["origin"] for r in few.rows].count("replay") == 3  # all there are


def _worded(facts: int, wordings: int, first: int = 0) -> list[dict]:
    """`wordings` training questions for each of `facts` facts (rows with the same answer)."""
    asks = ("Price of plan {}?", "How much is plan {}?", "What does plan {} cost?", "Plan {}?")
    system = {"role": "system", "content": "You are the support assistant."}
    rows = []
    for f in range(first, first + facts):
        for w in range(wordings):
            row = chat_row(f"f{f}-w{w}", asks[w].format(f), f"Plan {f} costs ${90 + f}.")
            rows.append({**row, "messages": [system, *row["messages"]], "origin": "new"})
    return rows


def test_the_probe_asks_held_out_wordings_the_cycle_does_not_train(caplog):
    import logging

    rows = _worded(6, 4) + _worded(3, 2, first=6) + _rows(10, "replay")
    settings = SETTINGS.model_copy(
        update={"target_recall": 0.9, "target_sample": 4, "target_held_out": True}
    )
    with caplog.at_level(logging.INFO, logger="tasks.target"):
        train, held = hold_out_wordings(rows, settings, seed=0)
    said = f"4 wordings held out of training: {', '.join(r['id'] for r in held)}"
    assert said in caplog.text  # the mix lists them; the log says they were not trained
    answers = [response_of(r) for r in held]
    assert len(held) == 4 and len(set(answers)) == 4  # one wording of four facts
    assert len(train) == len(rows) - 4 and not any(r in train for r in held)
    assert all(sum(response_of(r) == a for r in train) == 3 for a in answers)
    assert all(int(r["id"][1]) < 6 for r in held)  # two wordings: both stay trained
    assert hold_out_wordings(rows, settings, seed=0) == (train, held)  # seeded
    probe = build_probe(train, settings, 0, held)
    assert sorted(r["id"] for r in probe.rows) == sorted(r["id"] for r in held)
    asked = settings.model_copy(update={"target_held_out": False})
    assert hold_out_wordings(rows, asked, seed=0) == (rows, [])  # off: questions as trained
    assert hold_out_wordings(_worded(4, 2), settings, seed=0) == (_worded(4, 2), [])


def test_a_held_out_wording_is_not_trained(tiny_model: Path, tmp_path: Path):
    from tasks.chat import encode_chat
    from tasks.models import load_tokenizer

    settings = SETTINGS.model_copy(update={"target_recall": 1.0, "max_epochs": 1})
    held = settings.model_copy(update={"target_held_out": True})
    rows = _worded(2, 4)
    fit = train_adapter(str(tiny_model), rows, settings, tmp_path / "asked")
    fit_held = train_adapter(str(tiny_model), rows, held, tmp_path / "held")
    tokenizer = load_tokenizer(str(tiny_model))
    _, out = hold_out_wordings(rows, held, seed=0)
    unseen = sum(len(encode_chat(tokenizer, r["messages"], 64)["input_ids"]) for r in out)
    assert len(out) == 2 and fit_held.tokens == fit.tokens - unseen > 0
    assert len(fit_held.recall_curve) == 1
    keys = {adapter_key("base", s, "mix", None, 0, False) for s in (settings, held)}
    assert len(keys) == 2


def _known_rows(tiny_model: Path) -> list[dict]:
    """Rows whose key fact is a word the model already answers with: learned from the start."""
    from freshtune.config import EvalSettings
    from tasks.chat import generate_answers
    from tasks.metrics import normalise_answer
    from tasks.models import load_causal_lm, load_tokenizer

    rows = _rows()
    model = load_causal_lm(str(tiny_model)).eval()
    answers = generate_answers(model, load_tokenizer(str(tiny_model)), rows, EvalSettings())
    known = []
    for row, answer in zip(rows, answers):
        words = [w for w in normalise_answer(answer).split() if len(w) > 1]
        if words:
            reply = {"role": "assistant", "content": answer}
            known.append({**row, "messages": [*row["messages"][:-1], reply], "facts": words[:1]})
    assert len(known) >= 4
    return known[:4]


def test_a_reached_target_stops_early_and_says_why(tiny_model: Path, tmp_path: Path):
    # A learning rate too small to change an answer: the rows stay learned after epoch 1.
    settings = SETTINGS.model_copy(
        update={"target_recall": 0.75, "max_epochs": 4, "learning_rate": 1e-7}
    )
    fit = train_adapter(str(tiny_model), _known_rows(tiny_model), settings, tmp_path / "a")
    assert fit.epochs == 1 and fit.recall_curve == ((1.0, fit.recall_curve[0][1]),)
    assert fit.recall_curve[0][1] >= 0.75 and fit.steps == 1  # 4 rows, batch 4
    assert fit.stop_reason == "target recall 0.75 reached"


def test_a_target_met_early_waits_for_the_minimum_epochs(tiny_model: Path, tmp_path: Path):
    settings = SETTINGS.model_copy(
        update={
            "target_recall": 0.75,
            "max_epochs": 4,
            "learning_rate": 1e-7,
            "target_min_epochs": 2,
        }
    )
    fit = train_adapter(str(tiny_model), _known_rows(tiny_model), settings, tmp_path / "a")
    curve = dict(fit.recall_curve)
    assert curve[1.0] >= 0.75 and fit.epochs == 2 and list(curve) == [1.0, 2.0]
    assert fit.stop_reason == "target recall 0.75 reached" and fit.steps == 2


def test_an_unreached_target_trains_the_whole_budget(tiny_model: Path, tmp_path: Path):
    settings = SETTINGS.model_copy(update={"target_recall": 1.0, "max_epochs": 2})
    fit = train_adapter(str(tiny_model), _rows(4), settings, tmp_path / "b", seed=0)
    assert fit.epochs == 2 and [e for e, _ in fit.recall_curve] == [1, 2]
    assert fit.stop_reason.startswith("max_epochs=2 reached below target recall 1.00")
    fixed = train_adapter(
        str(tiny_model), _rows(4), SETTINGS.model_copy(update={"epochs": 2}), tmp_path / "c"
    )
    assert fixed.steps == fit.steps and fixed.stop_reason == "fixed epochs"
    assert fixed.recall_curve == ()


def test_a_target_keys_the_adapter_and_the_default_keeps_old_keys():
    plain = adapter_key("base", SETTINGS, "mix", None, 0, False)
    target = SETTINGS.model_copy(update={"target_recall": 0.9})
    assert adapter_key("base", target, "mix", None, 0, False) != plain
    budget = SETTINGS.model_copy(update={"max_epochs": 7})  # no target: the budget is unused
    assert adapter_key("base", budget, "mix", None, 0, False) == plain
