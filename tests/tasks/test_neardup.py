"""MinHash near-dup: its decisions match exact Jaccard away from the threshold, and agree with
the reference implementation (datasketch) on the same shingles."""

import itertools
import random
import re

import numpy as np

from tasks.neardup import near_duplicates, signatures


def _bigrams(text: str) -> set[tuple[str, str]]:
    words = re.sub(r"[^\w\s]+", " ", text.lower()).split()
    return set(itertools.pairwise(words))


def _variants(seed: int = 0) -> tuple[list[str], list[float]]:
    """Each base sentence, then copies with 0..12 words changed; exact Jaccard to the base."""
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    texts, jaccard = [], []
    for _ in range(20):
        base = rng.choices(vocab, k=60)
        texts.append(" ".join(base))
        jaccard.append(0.0)  # the first of its family: never a duplicate
        for changes in range(13):
            copy = list(base)
            for i in rng.sample(range(60), changes):
                copy[i] = rng.choice(vocab)
            a, b = _bigrams(" ".join(base)), _bigrams(" ".join(copy))
            texts.append(" ".join(copy))
            jaccard.append(len(a & b) / len(a | b))
    return texts, jaccard


def test_decisions_follow_exact_jaccard_outside_a_margin():
    texts, jaccard = _variants()
    dup = near_duplicates(texts, threshold=0.8, num_perm=64)
    j = np.array(jaccard)
    assert dup[j >= 0.92].all()
    assert not dup[j <= 0.65].any()  # includes every family's first row and unrelated rows


def test_signature_agreement_estimates_jaccard_like_datasketch():
    from datasketch import MinHash

    texts, jaccard = _variants(seed=1)
    sig = signatures(texts, num_perm=128)
    ours, theirs, exact = [], [], []
    for base in range(0, len(texts), 14):
        for k in range(1, 14):
            i = base + k
            ours.append(float((sig[base] == sig[i]).mean()))
            mh = [MinHash(num_perm=128) for _ in range(2)]
            for m, t in zip(mh, (texts[base], texts[i])):
                m.update_batch([f"{a} {b}".encode() for a, b in _bigrams(t)])
            theirs.append(mh[0].jaccard(mh[1]))
            exact.append(jaccard[i])
    ours_err = np.abs(np.array(ours) - exact).mean()
    theirs_err = np.abs(np.array(theirs) - exact).mean()
    assert ours_err < 0.05 and ours_err < 1.5 * theirs_err + 0.01
