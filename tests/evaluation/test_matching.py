"""Maximum-weight bipartite matching against exhaustive search."""

import itertools

import numpy as np
import pytest

from o2f.evaluation.matching import (
    RowSubsetMatcher,
    connected_components,
    hungarian_max,
    max_weight_matching,
)


def best_total(w):
    """Exhaustive maximum-weight matching value (each row takes a free column or none)."""
    n, m = w.shape
    best = 0.0
    for choice in itertools.product(range(-1, m), repeat=n):
        cols = [c for c in choice if c >= 0]
        if len(set(cols)) == len(cols):
            best = max(best, sum(w[i, c] for i, c in enumerate(choice) if c >= 0))
    return best


def random_graph(rng, n, m, density=0.5):
    return rng.uniform(0.5, 1.0, size=(n, m)) * (rng.uniform(size=(n, m)) < density)


@pytest.mark.parametrize("seed", range(60))
def test_max_weight_matching_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 6, size=2)
    w = random_graph(rng, n, m)
    rows, cols = max_weight_matching(w)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert (w[rows, cols] > 0).all()
    assert w[rows, cols].sum() == pytest.approx(best_total(w), abs=1e-12)


def test_weight_beats_cardinality():
    # a path r0-c0 (0.6), r1-c0 (1.0), r1-c1 (0.6), r2-c1 (1.0), r2-c2 (0.6)
    w = np.array([[0.6, 0, 0], [1.0, 0.6, 0], [0, 1.0, 0.6]])
    rows, cols = max_weight_matching(w)
    assert list(zip(rows.tolist(), cols.tolist())) == [(1, 0), (2, 1)]


def test_hungarian_square_and_empty_graph():
    w = np.array([[1.0, 2.0], [3.0, 1.0]])
    assert hungarian_max(w).tolist() == [1, 0]
    rows, cols = max_weight_matching(np.zeros((3, 2)))
    assert rows.size == 0 and cols.size == 0


def test_connected_components():
    adj = np.zeros((4, 3), dtype=bool)
    adj[0, 0] = adj[2, 0] = adj[2, 1] = adj[3, 2] = True  # row 1 isolated
    comps = [(r.tolist(), c.tolist()) for r, c in connected_components(adj)]
    assert comps == [([0, 2], [0, 1]), ([3], [2])]


@pytest.mark.parametrize("seed", range(20))
def test_row_subset_matcher_equals_fresh_solves(seed):
    rng = np.random.default_rng(100 + seed)
    n, m = rng.integers(1, 9), rng.integers(1, 6)
    w = random_graph(rng, n, m, density=0.4)
    scores = rng.uniform(size=n)
    matcher = RowSubsetMatcher(w)
    for threshold in np.linspace(0, 1, 6):  # increasing: nested row sets
        keep = scores > threshold
        row_matched, col_matched = matcher(keep)
        assert not (row_matched & ~keep).any()
        assert row_matched.sum() == col_matched.sum()
        sub = np.where(keep[:, None], w, 0.0)
        rows, cols = max_weight_matching(sub)
        # same optimal value; with continuous weights the optimum is unique
        assert sorted(np.flatnonzero(row_matched)) == sorted(rows.tolist())
        assert sorted(np.flatnonzero(col_matched)) == sorted(cols.tolist())
