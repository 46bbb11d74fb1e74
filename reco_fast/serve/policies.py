"""Exploration policies: which of the model's top candidates to show, and with what probability.

A policy turns the model's ranked candidates (the top ``top_m`` products by
click probability, best first) into the ``k`` products shown, and says for each
shown product its **propensity**:

    propensity(r, p) = P(the policy shows candidate r at position p | the candidate scores)

the probability, over the policy's own randomness only, that this product is
placed at exactly this position (0-based) given the candidate list and its
scores. It is the marginal over everything else the policy shows, so for every
position ``p`` the propensities of all candidates sum to 1 (when the position
is filled), which :func:`propensity_matrix` makes checkable. Off-policy
evaluation (:mod:`reco_fast.build.offpolicy`) weighs a logged click at ``(r, p)`` by
``1 / propensity(r, p)``.

Policies (each ``select`` is a few microseconds; the propensities of a request
are computed later, by the impression log's writer thread or offline, from the
logged candidate scores):

* :class:`Greedy` shows the top k (propensity 1). No exploration: off-policy
  evaluation can only score a candidate on the slots where it agrees with it.
* :class:`EpsilonGreedy` shows the top k; with probability ``epsilon`` it picks
  one position ``j`` uniformly and one other candidate ``c`` uniformly among the
  ``top_m`` (excluding the one at ``j``): a shown ``c`` swaps places with ``j``,
  an unshown ``c`` replaces it. With ``n`` candidates, ``k' = min(k, n)`` shown
  and ``m = min(max(top_m, k), n)`` candidates (the shown ones always count),
  ``e = epsilon``:

  - top-k candidate ``r`` at its own position: ``1 - e/k' - e (k'-1) / (k' (m-1))``
  - top-k candidate ``r`` at another shown position: ``2 e / (k' (m-1))``
  - candidate ranked ``k'..m-1`` at any shown position: ``e / (k' (m-1))``
  - anything else: 0.

* :class:`SoftmaxSampling` draws the k shown products one position after the
  other, without replacement, among the top ``max(top_m, k)`` with probability proportional
  to ``exp(logit(probability) / temperature)`` (Plackett-Luce). The propensity
  of ``r`` at ``p`` sums, over every set ``S`` of ``p`` other candidates, the
  probability that the first ``p`` draws are ``S`` (in any order) times
  ``w_r / (W - w(S))``; computed exactly by dynamic programming over those sets
  (``top_m`` and ``k`` are at most :data:`MAX_SOFTMAX_TOP_M` to keep this cheap).

Policies hold their own random generator (``seed`` for reproducible runs) and are
thread-safe under the GIL. Only the standard library is used.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_SOFTMAX_TOP_M",
    "EpsilonGreedy",
    "Greedy",
    "Policy",
    "SoftmaxSampling",
    "policy_from_json",
    "propensity_matrix",
]

MAX_SOFTMAX_TOP_M = 12
"""SoftmaxSampling's exact propensities visit every set of up to k-1 of the top_m
candidates; 12 keeps that at most 2**12 sets."""
_LOGIT_EPS = 1e-12
MIN_TEMPERATURE = 1e-6


class Policy:
    """Base class. ``top_m`` is how many ranked candidates ``select`` chooses from."""

    name = "policy"
    top_m = 0
    explores = False

    def select(self, scores: Sequence[float], k: int) -> list[int]:
        """Indices into ``scores`` (ranked best first) of the products to show, in position order."""
        raise NotImplementedError

    def propensities(self, scores: Sequence[float], k: int, picks: Sequence[int]) -> list[float]:
        """Propensity of each picked candidate at its position (see the module docstring).

        ``scores``: the candidates' probabilities, best first; ``k``: products shown;
        ``picks``: indices into ``scores`` in position order (what :meth:`select` returned).
        Returns one probability per pick.
        """
        matrix = self.matrix(scores, k)
        return [matrix[r][p] for p, r in enumerate(picks)]

    def matrix(self, scores: Sequence[float], k: int) -> list[list[float]]:
        """``P[r][p]``: propensity of candidate ``r`` at position ``p``, for every r and p < k'.

        ``scores``: the candidates' probabilities, best first (``r`` indexes them);
        ``k``: products shown (k' = the number the policy can show, at most ``k``).
        """
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The policy's name and parameters (stored in every impression record)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_json().items() if k != "name")
        return f"{type(self).__name__}({params})"


class Greedy(Policy):
    """The model's top k, in its order (propensity 1 for each shown product)."""

    name = "greedy"

    def select(self, scores: Sequence[float], k: int) -> list[int]:
        return list(range(min(k, len(scores))))

    def propensities(self, scores: Sequence[float], k: int, picks: Sequence[int]) -> list[float]:
        return [1.0] * len(picks)

    def matrix(self, scores: Sequence[float], k: int) -> list[list[float]]:
        n = len(scores)
        shown = min(k, n)
        return [[1.0 if r == p else 0.0 for p in range(shown)] for r in range(n)]


def _check_top_m(top_m: Any, limit: int | None = None) -> int:
    if isinstance(top_m, bool) or not isinstance(top_m, int) or top_m < 2:
        raise ValueError(f"top_m must be an integer >= 2, got {top_m!r:.40}")
    if limit is not None and top_m > limit:
        raise ValueError(f"top_m must be <= {limit} (exact propensities), got {top_m}")
    return top_m


class EpsilonGreedy(Policy):
    """Top k; with probability ``epsilon`` one position swapped with a random top-``top_m`` candidate.

    Parameters
    ----------
    epsilon : float in [0, 1]
        Probability that a request explores.
    top_m : int >= 2
        Candidates considered (the model's top ``top_m``); the request asks the
        model for ``max(k, top_m)``.
    seed : int, optional
        Seed of the policy's random generator (reproducible runs).
    """

    name = "epsilon_greedy"
    explores = True

    def __init__(self, epsilon: float = 0.1, top_m: int = 10, seed: int | None = None):
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.top_m = _check_top_m(top_m)
        self.seed = seed
        self._rng = random.Random(seed)

    def select(self, scores: Sequence[float], k: int) -> list[int]:
        n = len(scores)
        shown = min(k, n)
        m = min(max(self.top_m, k), n)  # the shown products are always candidates
        picks = list(range(shown))
        if m < 2 or shown == 0 or self._rng.random() >= self.epsilon:
            return picks
        rng = self._rng
        j = rng.randrange(shown)
        c = rng.randrange(m - 1)
        if c >= j:
            c += 1  # uniform over the m - 1 candidates other than the one at j
        if c < shown:
            picks[j], picks[c] = picks[c], picks[j]
        else:
            picks[j] = c
        return picks

    def matrix(self, scores: Sequence[float], k: int) -> list[list[float]]:
        n = len(scores)
        shown = min(k, n)
        m = min(max(self.top_m, k), n)  # the shown products are always candidates
        out = [[0.0] * shown for _ in range(n)]
        if m < 2 or shown == 0:
            for r in range(shown):
                out[r][r] = 1.0
            return out
        e = self.epsilon
        one = e / (shown * (m - 1))  # a given (position j, candidate c) draw
        for r in range(m):
            for p in range(shown):
                if r < shown:
                    out[r][p] = 1.0 - e / shown - (shown - 1) * one if r == p else 2.0 * one
                else:
                    out[r][p] = one
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "epsilon": self.epsilon, "top_m": self.top_m}


def _log_weights(scores: Sequence[float], temperature: float) -> list[float]:
    """logit(score) / temperature of each candidate (scores clipped to [1e-12, 1 - 1e-12])."""
    out = []
    for s in scores:
        p = min(max(float(s), _LOGIT_EPS), 1.0 - _LOGIT_EPS)
        out.append(math.log(p / (1.0 - p)) / temperature)
    return out


def _weights(lw: Sequence[float]) -> list[float]:
    top = max(lw)
    return [math.exp(v - top) for v in lw]


def _draw_probabilities(
    w: Sequence[float], lw: Sequence[float], left: Sequence[int]
) -> list[float]:
    """The softmax over the candidates still left. ``w`` are the weights relative to the
    best candidate; when the ones left have underflowed there, they are normalised by
    their own maximum instead, so the best remaining candidate is always drawable."""
    total = 0.0
    for i in left:
        total += w[i]
    if total > 1e-200:
        return [w[i] / total for i in left]
    top = max(lw[i] for i in left)
    e = [math.exp(lw[i] - top) for i in left]
    total = sum(e)
    return [x / total for x in e]


class SoftmaxSampling(Policy):
    """Sample the k shown products among the top ``top_m`` by a softmax of their logits.

    Position after position, without replacement, each remaining candidate is
    drawn with probability proportional to ``exp(logit(p) / temperature)``
    where ``p`` is the model's click probability. A small temperature is nearly
    greedy; a large one nearly uniform over the top ``top_m``.

    Parameters
    ----------
    temperature : float > 0
        Softmax temperature, in logit units.
    top_m : int in [2, MAX_SOFTMAX_TOP_M]
        Candidates sampled from (the model's top ``top_m``).
    seed : int, optional
        Seed of the policy's random generator.
    """

    name = "softmax"
    explores = True

    def __init__(self, temperature: float = 1.0, top_m: int = 10, seed: int | None = None):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
        if not (temperature >= MIN_TEMPERATURE and math.isfinite(temperature)):
            raise ValueError(
                f"temperature must be a finite number >= {MIN_TEMPERATURE:g}, got {temperature!r}"
            )
        self.temperature = float(temperature)
        self.top_m = _check_top_m(top_m, MAX_SOFTMAX_TOP_M)
        self.seed = seed
        self._rng = random.Random(seed)

    def select(self, scores: Sequence[float], k: int) -> list[int]:
        _check_softmax_k(k)
        m = min(max(self.top_m, k), len(scores))
        shown = min(k, m)
        if shown == 0:
            return []
        lw = _log_weights(scores[:m], self.temperature)
        w = _weights(lw)
        left = list(range(m))
        picks = []
        rng = self._rng
        for _ in range(shown):
            probs = _draw_probabilities(w, lw, left)
            u = rng.random()
            acc = 0.0
            for i, q in zip(left, probs, strict=True):
                acc += q
                if u < acc:
                    chosen = i
                    break
            else:  # rounding left u above the sum: the last drawable candidate
                chosen = max(i for i, q in zip(left, probs, strict=True) if q > 0)
            picks.append(chosen)
            left.remove(chosen)
        return picks

    def matrix(self, scores: Sequence[float], k: int) -> list[list[float]]:
        n = len(scores)
        _check_softmax_k(k)
        m = min(max(self.top_m, k), n)  # the shown products are always candidates
        shown = min(k, m)
        out = [[0.0] * shown for _ in range(n)]
        if shown == 0:
            return out
        lw = _log_weights(scores[:m], self.temperature)
        w = _weights(lw)
        bits = [1 << r for r in range(m)]
        # f: probability that the first |S| draws are exactly the set S (bitmask)
        f: dict[int, float] = {0: 1.0}
        for p in range(shown):
            nxt: dict[int, float] = {}
            last = p + 1 == shown
            column = [0.0] * m
            for s, prob in f.items():
                left = [r for r in range(m) if not s & bits[r]]
                for r, q in zip(left, _draw_probabilities(w, lw, left), strict=True):
                    q *= prob
                    column[r] += q
                    if not last:
                        t = s | bits[r]
                        nxt[t] = nxt.get(t, 0.0) + q
            for r in range(m):
                out[r][p] = column[r]
            f = nxt
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "temperature": self.temperature, "top_m": self.top_m}


def _check_softmax_k(k: int) -> None:
    if k > MAX_SOFTMAX_TOP_M:
        raise ValueError(
            f"k must be <= {MAX_SOFTMAX_TOP_M} with SoftmaxSampling (exact propensities), got {k}"
        )


def policy_from_json(data: Mapping[str, Any] | None) -> Policy:
    """The policy an impression record names (``record["policy"]``); None or greedy -> Greedy."""
    if data is None:
        return Greedy()
    name = data.get("name")
    if name == Greedy.name:
        return Greedy()
    if name == EpsilonGreedy.name:
        return EpsilonGreedy(data["epsilon"], data["top_m"])
    if name == SoftmaxSampling.name:
        return SoftmaxSampling(data["temperature"], data["top_m"])
    raise ValueError(f"unknown exploration policy {str(name)[:40]!r}")


def propensity_matrix(policy: Policy, scores: Sequence[float], k: int) -> list[list[float]]:
    """``P[r][p]`` for every candidate ``r`` (ranked best first) and shown position ``p``."""
    return policy.matrix(scores, k)
