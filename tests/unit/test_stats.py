"""llm_magics.runs.stats against scipy's own answers and on simulated predictions of known difference."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from llm_magics.runs import stats


def test_t_interval_is_scipys():
    values = [0.861, 0.842, 0.874]
    got = stats.t_interval(values)
    low, high = sp.t.interval(0.95, 2, loc=np.mean(values), scale=sp.sem(values))
    assert (got.low, got.high) == pytest.approx((low, high)) and got.mean == pytest.approx(np.mean(values))
    assert got.n == 3 and "t over 3 seeds" in got.method
    one = stats.t_interval([0.7])
    assert one.low == one.high == 0.7 and "one seed" in one.method


def test_bootstrap_interval_is_scipys_with_the_same_generator():
    scores = np.random.default_rng(3).integers(0, 2, 300).astype(float)
    got = stats.bootstrap_interval(scores, seed=7)
    ref = sp.bootstrap((scores,), np.mean, confidence_level=0.95, n_resamples=stats.RESAMPLES,
                       method="percentile", rng=np.random.default_rng(7)).confidence_interval
    assert (got.low, got.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert got.low < scores.mean() < got.high and "bootstrap over 300 rows" in got.method


def test_mcnemar_is_an_exact_binomial_test_on_the_discordant_pairs():
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.8
    b = rng.random(500) < 0.75
    p, a_only, b_only = stats.mcnemar_exact(a, b)
    assert a_only == int(np.sum(a & ~b)) and b_only == int(np.sum(~a & b))
    assert p == pytest.approx(sp.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    assert stats.mcnemar_exact([1, 0], [1, 0]) == (1.0, 0, 0)


def simulated_pair(rng, n, acc_a, acc_b):
    """Correctness of two classifiers on the same n items, sharing most of their errors (as real runs do)."""
    hard = rng.random(n)
    return (hard < acc_a).astype(float), (hard + rng.normal(0, 0.05, n) < acc_b).astype(float)


def test_a_five_point_difference_over_2000_items_is_found():
    a, b = simulated_pair(np.random.default_rng(1), 2000, 0.85, 0.80)
    result = stats.paired_difference(a, b)
    assert result.significant and result.difference.low > 0
    assert result.mcnemar_p < 0.01 and result.shared == 2000


def test_no_difference_is_covered_in_at_least_90_of_100_draws():
    rng = np.random.default_rng(2)
    covered = 0
    for draw in range(100):
        a, b = simulated_pair(rng, 400, 0.8, 0.8)
        covered += stats.paired_difference(a, b, resamples=500, seed=draw).difference.covers(0.0)
    assert covered >= 90


def test_items_pair_across_a_reordered_frame_and_disjoint_sets_are_refused():
    texts = [f"review number {i}" for i in range(50)]
    a = pd.DataFrame({"item_id": [stats.item_id(t) for t in texts], "correct": [i % 2 for i in range(50)]})
    shuffled = a.sample(frac=1.0, random_state=0).reset_index(drop=True)
    left, right = stats.pair_items(a, shuffled)
    assert (left == right).all() and len(left) == 50
    assert stats.item_id("  review number 3 ") == stats.item_id("review number 3")
    other = pd.DataFrame({"item_id": [stats.item_id(t + "!") for t in texts], "correct": 1})
    with pytest.raises(ValueError, match="share no test rows"):
        stats.pair_items(a, other)
