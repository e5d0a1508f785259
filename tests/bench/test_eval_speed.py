"""The evaluation-speed bench on the tiny model: mechanics only (numbers: real runs)."""

import json

from bench import eval_speed


def test_every_contender_is_timed_and_compared_with_the_reference(tiny_model, tmp_path):
    out = eval_speed.main(
        [
            "--model",
            str(tiny_model),
            "--config",
            "tiny",
            "--rounds",
            "1",
            "--batch-sizes",
            "8,32",
            "--rank",
            "4",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    names = [
        "on-the-fly@16",
        "merged@8",
        "merged@32",
        "merged-ungrouped@32",
        "merged-generate@32",
        "merged-bf16@32",
        "base@32",
    ]
    assert list(out["median_s"]) == names
    assert all(s > 0 for s in out["median_s"].values())
    # merging and batching change rounding, not the model: float32 answers agree
    assert out["same_answers"]["merged@32"] >= 0.9 * out["questions"]
    assert out["same_answers"]["merged-ungrouped@32"] >= 0.9 * out["questions"]
    # evaluation's own decoding answers as transformers' generate does
    assert out["same_answers"]["merged-generate@32"] == out["same_answers"]["merged@32"]
    assert json.loads((tmp_path / "out.json").read_text())["questions"] == out["questions"]


def test_a_skipped_contender_is_left_out_and_the_reference_never(tiny_model):
    out = eval_speed.main(
        [
            *("--model", str(tiny_model), "--config", "tiny", "--rounds", "1"),
            *("--batch-sizes", "8", "--rank", "4", "--skip", "merged-bf16@8,base@8,on-the-fly@16"),
        ]
    )
    assert list(out["median_s"]) == [
        "on-the-fly@16",
        "merged@8",
        "merged-ungrouped@8",
        "merged-generate@8",
    ]


def test_a_trained_adapter_is_timed_instead_of_a_random_one(tiny_model, tmp_path):
    adapter = eval_speed.make_adapter(str(tiny_model), 4, tmp_path / "trained")
    skip = "merged-bf16@8,base@8,merged-ungrouped@8"
    out = eval_speed.main(
        [
            *("--model", str(tiny_model), "--config", "tiny", "--rounds", "1"),
            *("--batch-sizes", "8", "--adapter", str(adapter), "--skip", skip),
        ]
    )
    assert out["adapter"] == str(adapter)
    assert list(out["median_s"]) == ["on-the-fly@16", "merged@8", "merged-generate@8"]
    assert out["same_answers"]["merged-generate@8"] == out["same_answers"]["merged@8"]
