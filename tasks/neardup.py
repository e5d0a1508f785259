"""Near-duplicate detection: MinHash over word bigrams, banded LSH, verified signatures.

Vectorised with numpy and pyarrow so a million rows take seconds: tokenising is pyarrow's
(C++), each permutation is one numpy pass over every shingle of every row, and the LSH bands
are grouped by sorting. `datasketch` (the reference implementation, used by the benchmark as
the peer) spends most of its time in per-row Python, which is too slow at this size.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tasks.columns import blocks
from tasks.ngrams import MIX, ngram_hashes, tokenise

ROWS_PER_BAND = 4


def signatures(texts: Sequence[str], num_perm: int, seed: int = 1) -> np.ndarray:
    """MinHash signatures, shape (rows, num_perm), uint32; all-max for a row without words."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, num_perm, dtype=np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)
    sig = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    with ThreadPoolExecutor(2) as pool:
        for block in blocks(len(texts)):
            _sign(texts[block], a, b, sig[block], pool)
    return sig


def _sign(
    texts: list[str], a: np.ndarray, b: np.ndarray, out: np.ndarray, pool: ThreadPoolExecutor
) -> None:
    """One block's signatures into `out` (a view of the block's rows), a thread per permutation."""
    hashes, rows = ngram_hashes(tokenise(texts), 2)
    if hashes.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    owners = rows[starts]
    # 32-bit arithmetic: a*h + b mod 2^32 (a odd) permutes 32-bit values; it estimates Jaccard
    # as well as 64-bit multiply-shift here (tests/tasks/test_neardup.py) at a tenth the cost.
    hashes = (hashes >> np.uint64(32)).astype(np.uint32)

    def one(i: int) -> None:
        with np.errstate(over="ignore"):
            out[owners, i] = np.minimum.reduceat(hashes * a[i] + b[i], starts)

    list(pool.map(one, range(len(a))))


def near_duplicates(texts: Sequence[str], threshold: float, num_perm: int) -> np.ndarray:
    """Boolean mask of rows that nearly repeat an earlier row (estimated Jaccard >= threshold)."""
    if not texts:
        return np.zeros(0, dtype=bool)
    keys, has_words = _all_band_keys(texts, num_perm)
    pairs = [_candidates(band, has_words) for band in keys]
    del keys
    # Only rows in a candidate pair need their whole signature: signed again, they take a few
    # percent of the rows' memory and time (a million rows' signatures are 0.25 GB).
    rows = np.unique(np.concatenate([np.r_[leaders, members] for leaders, members in pairs]))
    sig = signatures([texts[i] for i in rows], num_perm)
    dup = np.zeros(len(texts), dtype=bool)
    for leaders, members in pairs:
        a, b = np.searchsorted(rows, leaders), np.searchsorted(rows, members)
        similar = (sig[a] == sig[b]).mean(axis=1) >= threshold
        dup[members[similar]] = True
    return dup


def _all_band_keys(texts: Sequence[str], num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Each band's key of every row, shape (bands, rows), and which rows have words: signed a
    block at a time, so no signature of all rows is held."""
    bands = num_perm // ROWS_PER_BAND
    keys = np.empty((bands, len(texts)), dtype=np.uint64)
    has_words = np.empty(len(texts), dtype=bool)
    for block in blocks(len(texts)):
        sig = signatures(texts[block], num_perm)
        has_words[block] = sig[:, 0] != np.iinfo(np.uint32).max
        for band in range(bands):
            columns = slice(band * ROWS_PER_BAND, (band + 1) * ROWS_PER_BAND)
            keys[band, block] = _band_keys(sig[:, columns])
    return keys, has_words


def _band_keys(band: np.ndarray) -> np.ndarray:
    key = np.zeros(len(band), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in band.T:
            key = key * MIX + column.astype(np.uint64)
    return key


def _candidates(keys: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first row with a band key, each later row with that key)."""
    index = np.flatnonzero(usable)
    if index.size == 0:
        return index, index
    order = index[np.argsort(keys[index], kind="stable")]
    sorted_keys = keys[order]
    new_group = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    leader = order[np.flatnonzero(new_group)][np.cumsum(new_group) - 1]
    later = ~new_group
    return leader[later], order[later]
