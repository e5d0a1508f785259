"""The review-generalisation bench on the tiny model: mechanics only (numbers: real runs)."""

from bench import review_generalisation


def test_both_arms_train_and_are_scored_on_the_unflagged_questions(tiny_model, tmp_path):
    out = review_generalisation.main(
        [
            "--model",
            str(tiny_model),
            "--config",
            "tiny",
            "--workspace",
            str(tmp_path / "ws"),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    flagged, generalised = out["arms"]["flagged-only"], out["arms"]["generalised"]
    assert out["flags"] > 0  # a tiny random model gets the month's facts wrong
    assert flagged["review_rows"] == out["flags"] < generalised["review_rows"]
    for arm in (flagged, generalised):
        assert len(arm["unflagged"]) == len(arm["flagged"]) == out["flags"]
    gain = out["unflagged_gain"]
    assert gain["low"] <= gain["estimate"] <= gain["high"]
    assert (tmp_path / "out.json").exists()
    # Refusals: flags on inventions about never-sold products, taught alone or with refusals
    # about other unknown names; each scored on the 32 never-sold questions no row trains on
    # and on month 1's facts.
    refusals = out["refusals"]
    alone, taught = refusals["arms"]["flagged-only"], refusals["arms"]["refusals-2"]
    assert refusals["flags"] > 0 and alone["review_rows"] == refusals["flags"]
    assert taught["review_rows"] > alone["review_rows"]
    for arm in refusals["arms"].values():
        assert len(arm["declined"]) == 32 and len(arm["facts"]) == len(alone["facts"]) > 0
    assert set(refusals["gains"]) == set(refusals["arms"]) - {"flagged-only"}
