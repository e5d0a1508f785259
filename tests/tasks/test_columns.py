"""Block-wise column work gives the same answers as one pass, whatever the block size."""

import gc
import random

import numpy as np
import pytest

from freshtune.config import DataSettings
from tasks import columns
from tasks.columns import blocks, gc_paused, matches
from tasks.curate import ngram_overlap
from tasks.neardup import signatures


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)] + ["call +44 20 7946 0958", "é", ""]
    return [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(n)]


def test_blocks_cover_every_row_once_in_order(monkeypatch):
    monkeypatch.setattr(columns, "BLOCK_ROWS", 7)
    spans = list(blocks(23))
    assert [(s.start, s.stop) for s in spans] == [(0, 7), (7, 14), (14, 21), (21, 23)]
    assert list(blocks(0)) == []


def test_results_do_not_depend_on_the_block_size(monkeypatch):
    texts, reference = _texts(101), _texts(30, seed=1)
    settings = DataSettings(decontam_ngram=2)
    whole = (
        matches(texts, r"\d{2}"),
        signatures(texts, 16),
        ngram_overlap(texts, reference, settings),
    )
    monkeypatch.setattr(columns, "BLOCK_ROWS", 8)
    blocked = (
        matches(texts, r"\d{2}"),
        signatures(texts, 16),
        ngram_overlap(texts, reference, settings),
    )
    assert whole[0].sum() > 0 and (whole[2] > 0).sum() > 0  # the inputs exercise every path
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)


def test_gc_paused_turns_collection_back_on_even_after_an_error():
    assert gc.isenabled()
    with pytest.raises(ValueError), gc_paused():
        assert not gc.isenabled()
        raise ValueError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()
