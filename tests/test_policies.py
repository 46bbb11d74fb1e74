"""Exploration policies: what they show, and that each logged propensity is the exact
probability that the policy puts that product at that position (reco_fast/serve/policies.py)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reco_fast.serve.policies import (
    MAX_SOFTMAX_TOP_M,
    EpsilonGreedy,
    Greedy,
    SoftmaxSampling,
    policy_from_json,
)

scores_st = st.lists(
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=0, max_size=14
).map(lambda xs: sorted(xs, reverse=True))


def _policies(top_m: int, seed: int = 0) -> list:
    return [
        Greedy(),
        EpsilonGreedy(0.3, top_m, seed=seed),
        EpsilonGreedy(1.0, top_m, seed=seed),
        SoftmaxSampling(0.7, min(top_m, MAX_SOFTMAX_TOP_M), seed=seed),
        SoftmaxSampling(1e-3, min(top_m, MAX_SOFTMAX_TOP_M), seed=seed),
    ]


@given(scores=scores_st, k=st.integers(0, 6), top_m=st.integers(2, 14))
def test_every_filled_position_sums_to_one(scores, k, top_m):
    """For each shown position, the propensities of all candidates sum to 1 (some product is
    always there), and none is negative."""
    for policy in _policies(top_m):
        matrix = policy.matrix(scores, k)
        assert len(matrix) == len(scores)
        for row in matrix:
            assert all(q >= 0.0 for q in row)
        columns = len(matrix[0]) if matrix else 0
        for p in range(columns):
            assert math.isclose(sum(row[p] for row in matrix), 1.0, abs_tol=1e-9), (policy, p)
        # a product is shown at most once: its propensities over positions sum to <= 1
        for row in matrix:
            assert sum(row) <= 1.0 + 1e-9


@given(scores=scores_st, k=st.integers(0, 6), top_m=st.integers(2, 14))
def test_select_shows_distinct_candidates_from_the_top_m(scores, k, top_m):
    for policy in _policies(top_m, seed=3):
        for _ in range(5):
            picks = policy.select(scores, k)
            assert len(picks) == min(k, len(scores))
            assert len(set(picks)) == len(picks)
            limit = policy.top_m if policy.explores else k
            assert all(0 <= r < min(len(scores), max(limit, k)) for r in picks)
            # the logged propensity of what was shown is never 0
            assert all(q > 0 for q in policy.propensities(scores, k, picks))


@pytest.mark.parametrize(
    "policy",
    [
        EpsilonGreedy(0.4, 6, seed=11),
        SoftmaxSampling(0.5, 6, seed=12),
        SoftmaxSampling(3.0, 5, seed=13),
    ],
    ids=repr,
)
@pytest.mark.parametrize("k,n", [(3, 8), (3, 2), (1, 8)])
def test_propensity_is_the_frequency_of_product_at_position(policy, k, n):
    """The definition, checked by simulation: over many draws, the share of draws that put
    candidate r at position p converges to the logged propensity of (r, p)."""
    scores = [0.95, 0.9, 0.7, 0.65, 0.4, 0.3, 0.2, 0.1][:n]
    draws = 60_000
    counts: Counter[tuple[int, int]] = Counter()
    for _ in range(draws):
        for p, r in enumerate(policy.select(scores, k)):
            counts[(r, p)] += 1
    matrix = policy.matrix(scores, k)
    for r in range(n):
        for p in range(len(matrix[r])):
            q = matrix[r][p]
            se = math.sqrt(max(q * (1 - q), 1e-12) / draws)
            assert abs(counts[(r, p)] / draws - q) <= 5 * se + 1e-4, (r, p, q)
    assert set(counts) <= {(r, p) for r in range(n) for p in range(len(matrix[r])) if matrix[r][p]}


def test_epsilon_greedy_closed_form():
    """The documented formulas, with k=3 shown out of m=10 candidates."""
    e, k, m = 0.2, 3, 10
    matrix = EpsilonGreedy(e, m).matrix([0.9 - 0.05 * i for i in range(12)], k)
    one = e / (k * (m - 1))
    assert matrix[0][0] == pytest.approx(1 - e / k - (k - 1) * one)
    assert matrix[0][2] == pytest.approx(2 * one)
    assert matrix[5][1] == pytest.approx(one)
    assert matrix[10] == [0.0, 0.0, 0.0]  # outside the top m: never shown
    assert EpsilonGreedy(0.0, m).matrix([0.5] * 4, 2) == [[1, 0], [0, 1], [0, 0], [0, 0]]


def test_greedy_and_softmax_limits():
    scores = [0.9, 0.8, 0.3, 0.2]
    assert Greedy().select(scores, 3) == [0, 1, 2]
    assert Greedy().propensities(scores, 3, [0, 1, 2]) == [1.0, 1.0, 1.0]
    # a tiny temperature is greedy, a huge one uniform
    cold = SoftmaxSampling(1e-4, 4).matrix(scores, 2)
    assert cold[0][0] == pytest.approx(1.0) and cold[1][1] == pytest.approx(1.0)
    hot = SoftmaxSampling(1e9, 4).matrix(scores, 2)
    assert all(hot[r][0] == pytest.approx(0.25) for r in range(4))


def test_seeded_policies_repeat():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    for make in (lambda: EpsilonGreedy(0.5, 6, seed=7), lambda: SoftmaxSampling(1.0, 6, seed=7)):
        a, b = make(), make()
        assert [a.select(scores, 3) for _ in range(50)] == [b.select(scores, 3) for _ in range(50)]


def test_json_round_trip_and_bad_arguments():
    for policy in (Greedy(), EpsilonGreedy(0.25, 7), SoftmaxSampling(0.5, 9)):
        again = policy_from_json(policy.to_json())
        assert type(again) is type(policy) and again.to_json() == policy.to_json()
    assert isinstance(policy_from_json(None), Greedy)
    with pytest.raises(ValueError, match="unknown exploration policy"):
        policy_from_json({"name": "thompson"})
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(1.5)
    with pytest.raises(TypeError, match="epsilon"):
        EpsilonGreedy("0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_m"):
        EpsilonGreedy(0.1, top_m=1)
    with pytest.raises(ValueError, match="top_m must be <= 12"):
        SoftmaxSampling(1.0, top_m=13)
    with pytest.raises(ValueError, match="temperature"):
        SoftmaxSampling(0.0)
    with pytest.raises(ValueError, match="temperature"):
        SoftmaxSampling(1e-7)
    with pytest.raises(ValueError, match="k must be <= 12"):
        SoftmaxSampling(1.0, 5).select([0.5] * 20, 13)
    with pytest.raises(ValueError, match="temperature"):
        SoftmaxSampling(math.inf)
