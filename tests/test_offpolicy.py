"""Off-policy evaluation on synthetic logged bandits whose truth is known (reco_fast/build/offpolicy.py).

Each synthetic request has ranked candidates with scores, a hidden attraction per
candidate and an examination probability per position: a product shown at
position p is clicked with probability examine[p] * attraction (the item-position
model the estimator assumes). The logging policy is one of reco_fast's own; the
candidate ranks by the hidden attraction (a different, better policy). Its true
per-slot CTR on the logged contexts is computed exactly from the hidden values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from reco_fast.build.offpolicy import estimate
from reco_fast.errors import InputError
from reco_fast.serve.impressions import LoggedImpression
from reco_fast.serve.policies import EpsilonGreedy, Greedy, SoftmaxSampling

K = 3
M = 8
EXAMINE = (1.0 + np.arange(K)) ** -0.7


def _bandit(policy, n: int, rng: np.random.Generator) -> tuple[list[LoggedImpression], float]:
    """n logged requests under ``policy`` and the candidate's true per-slot CTR on them."""
    impressions = []
    truth = 0.0
    for i in range(n):
        scores = sorted(rng.random(M).tolist(), reverse=True)
        ids = [f"r{i}p{j}" for j in range(M)]
        attraction = 0.9 * rng.random(M)
        picks = policy.select(scores, K)
        props = policy.propensities(scores, K, picks)
        shown = [
            {"product_id": ids[r], "position": p, "probability": scores[r], "propensity": q}
            for p, (r, q) in enumerate(zip(picks, props, strict=True))
        ]
        clicked = {ids[r] for p, r in enumerate(picks) if rng.random() < EXAMINE[p] * attraction[r]}
        best = np.argsort(-attraction, kind="stable")[:K]
        truth += float(sum(EXAMINE[p] * attraction[r] for p, r in enumerate(best)))
        record = {
            "type": "impression",
            "request_id": f"req{i}",
            "session_id": f"s{i}",
            "ts": float(i),
            "k": K,
            "policy": policy.to_json(),
            "shown": shown,
            "session": {"candidate": [ids[r] for r in best]},
        }
        if policy.explores:
            record["candidates"] = [[a, b] for a, b in zip(ids, scores, strict=True)]
        impressions.append(LoggedImpression(record, clicked))
    return impressions, truth / (n * K)


def _candidate(record):
    return record["session"]["candidate"]


@pytest.mark.parametrize(
    "policy",
    [SoftmaxSampling(1.0, M, seed=1), EpsilonGreedy(0.5, M, seed=2)],
    ids=repr,
)
def test_interval_covers_the_truth(policy):
    """One seeded run of 10,000 requests: the 95% IPS and SNIPS intervals contain the truth,
    with the normal approximation and with the bootstrap."""
    impressions, truth = _bandit(policy, 10_000, np.random.default_rng(7))
    for ci in ("normal", "bootstrap"):
        out = estimate(impressions, _candidate, clip=math.inf, ci=ci, n_boot=400)
        assert out["unsupported_slots"] == 0
        assert out["ips_ci"][0] <= truth <= out["ips_ci"][1], (ci, out["ips"], truth)
        assert out["snips_ci"][0] <= truth <= out["snips_ci"][1], (ci, out["snips"], truth)
        assert out["ips_ci"][1] - out["ips_ci"][0] < 0.2  # and it says something


@pytest.mark.parametrize(
    "policy",
    [SoftmaxSampling(1.0, M, seed=3), EpsilonGreedy(0.5, M, seed=4)],
    ids=repr,
)
def test_ips_is_unbiased(policy):
    """Unclipped IPS averages to the truth: over 200 independent logs of 100 requests, the
    mean error is within 3 standard errors of 0. (The normal interval of a log this small
    is not trustworthy: heavy-tailed weights make it cover less than 95%.)"""
    rng = np.random.default_rng(11)
    errors = []
    for _ in range(200):
        impressions, truth = _bandit(policy, 100, rng)
        out = estimate(impressions, _candidate, clip=math.inf)
        errors.append(out["ips"] - truth)
    errors = np.asarray(errors)
    se = errors.std(ddof=1) / math.sqrt(len(errors))
    assert abs(errors.mean()) <= 3 * se, (errors.mean(), se)


def test_on_policy_estimate_is_the_logged_ctr():
    """A candidate identical to a greedy logger: every weight is 1, so IPS and SNIPS equal
    the logged CTR exactly and nothing is unsupported."""
    impressions, _ = _bandit(Greedy(), 500, np.random.default_rng(3))

    def same(record):
        return [s["product_id"] for s in record["shown"]]

    out = estimate(impressions, same)
    assert out["ips"] == out["snips"] == out["logged_ctr"]
    assert out["matched_slots"] == out["slots"] == 1500
    assert out["unsupported_slots"] == 0 and out["clipped"] == 0


def test_greedy_logs_cannot_score_disagreements():
    """Slots where the candidate differs from a greedy log have no propensity: counted as
    unsupported, contributing nothing (the estimate is biased low, and says so)."""
    impressions, truth = _bandit(Greedy(), 2000, np.random.default_rng(5))
    out = estimate(impressions, _candidate)
    disagree = sum(
        1
        for imp in impressions
        for p, pid in enumerate(_candidate(imp.record))
        if imp.record["shown"][p]["product_id"] != pid
    )
    assert out["unsupported_slots"] == disagree > 0
    assert out["matched_slots"] + disagree == out["slots"]
    assert out["ips"] < truth


def test_clipping_is_counted_and_biases_down():
    impressions, _ = _bandit(SoftmaxSampling(1.0, M, seed=9), 3000, np.random.default_rng(9))
    free = estimate(impressions, _candidate, clip=math.inf)
    clipped = estimate(impressions, _candidate, clip=2.0)
    assert free["clipped"] == 0 < clipped["clipped"] <= clipped["matched_slots"]
    assert clipped["ips"] < free["ips"]


def test_bootstrap_is_seeded():
    impressions, _ = _bandit(EpsilonGreedy(0.3, M, seed=1), 400, np.random.default_rng(1))
    a = estimate(impressions, _candidate, ci="bootstrap", seed=5, n_boot=200)
    b = estimate(impressions, _candidate, ci="bootstrap", seed=5, n_boot=200)
    assert a["ips_ci"] == b["ips_ci"] and a["ips_ci"][0] <= a["ips"] <= a["ips_ci"][1]


def test_bad_arguments_and_damaged_logs():
    impressions, _ = _bandit(EpsilonGreedy(0.3, M, seed=1), 10, np.random.default_rng(1))
    with pytest.raises(ValueError, match="clip"):
        estimate(impressions, _candidate, clip=0.5)
    with pytest.raises(ValueError, match="ci must be"):
        estimate(impressions, _candidate, ci="jackknife")
    with pytest.raises(ValueError, match="level"):
        estimate(impressions, _candidate, level=0.8)
    impressions[0].record["shown"][0]["propensity"] = 0.0
    first = impressions[0].record["shown"][0]["product_id"]
    with pytest.raises(InputError, match=r"req0.*propensity 0\.0"):
        estimate(impressions, lambda r: [first] if r["request_id"] == "req0" else [])
