"""Off-policy evaluation: a candidate model's CTR on logged traffic, before it serves anyone.

The estimand is the click-through rate per shown slot that the candidate would
get on the logged requests if it showed its own deterministic ranking (its top
``k`` at the logged threshold, exactly what ``model.recommend`` returns).

Click model (item-position): whether a product shown at position ``p`` is
clicked depends on the request, the product and the position only, not on the
other products shown. Then, for a logged request ``i`` and each position ``p`` the
candidate fills with product ``a_p``, ::

    Y_i = sum_p  1[logged product at p == a_p] * clicked * w_ip,    w_ip = min(1 / q_ip, clip)

where ``q_ip`` is the logged propensity of that product at that position (the
logging policy's probability of putting it there, :mod:`reco_fast.serve.policies`).
Without clipping ``E[Y_i]`` is the candidate's expected clicks on request ``i``
whenever the logging policy could show every (product, position) pair the
candidate shows (``q > 0``, "support").

* **IPS** = ``sum_i Y_i / sum_i n_i`` with ``n_i`` the candidate's number of shown
  slots (known): unbiased for the per-slot CTR when unclipped and supported.
* **SNIPS** (self-normalised) = ``sum_i Y_i / sum_i W_i`` with ``W_i`` the sum of
  the weights of the matching slots (``E[W_i] = n_i``): slightly biased,
  usually much less variable.

Clipping at ``clip`` (default 100, i.e. propensities below 1 %) bounds the
variance of rare matches and biases the estimate *down* when it binds; the
result counts clipped weights. Slots the logging policy could not have filled
with the candidate's product (``q = 0``: a greedy log that disagrees with the
candidate, a product outside the logged top-m) contribute nothing, which also
biases it down; they are counted as ``unsupported_slots`` (with greedy logs,
typically most slots where the models disagree: log with exploration).

Confidence intervals (95% by default) treat requests as independent: the
normal approximation of a ratio of sums (delta method, the default), or a
percentile bootstrap over requests (``ci="bootstrap"``, seeded). Both need many
matched slots: importance weights are heavy-tailed, and on small logs (a few
hundred requests, propensities down to 1e-3) the intervals cover the truth
noticeably less often than their level says; ``matched_slots`` tells how much
evidence there is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from reco_fast.errors import InputError
from reco_fast.serve.impressions import DEFAULT_CLICK_WINDOW, LoggedImpression, LogRead, load_joined
from reco_fast.serve.policies import policy_from_json

__all__ = ["DEFAULT_CLIP", "estimate", "evaluate_model", "model_ranker"]

DEFAULT_CLIP = 100.0
_Z = {0.9: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def _logging_propensity(
    record: Mapping[str, Any], product_id: str, position: int, cache: dict[int, Any] | None = None
) -> float:
    """The logging policy's probability of showing ``product_id`` at ``position`` (0 if it could not).

    ``cache`` keeps each record's propensity matrix (keyed by the record's id()).
    """
    candidates = record.get("candidates")
    if not candidates:  # greedy: only what it showed
        shown = record["shown"]
        ok = position < len(shown) and shown[position]["product_id"] == product_id
        return 1.0 if ok else 0.0
    ids = [c[0] for c in candidates]
    if product_id not in ids:
        return 0.0
    matrix = None if cache is None else cache.get(id(record))
    if matrix is None:
        policy = policy_from_json(record.get("policy"))
        matrix = policy.matrix([c[1] for c in candidates], int(record["k"]))
        if cache is not None:
            cache[id(record)] = matrix
    row = matrix[ids.index(product_id)]
    return row[position] if position < len(row) else 0.0


def _ratio_ci(y: np.ndarray, d: np.ndarray, z: float) -> tuple[float, tuple[float, float], float]:
    """sum(y) / sum(d), its delta-method interval and standard error."""
    n = len(y)
    total = float(d.sum())
    if n == 0 or total <= 0:
        return math.nan, (math.nan, math.nan), math.nan
    v = float(y.sum()) / total
    if n < 2:
        return v, (math.nan, math.nan), math.nan
    resid = y - v * d
    se = math.sqrt(float(resid @ resid) * n / (n - 1)) / total
    return v, (v - z * se, v + z * se), se


def estimate(
    impressions: Iterable[LoggedImpression],
    rank: Callable[[Mapping[str, Any]], Sequence[str]],
    *,
    clip: float = DEFAULT_CLIP,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """IPS and SNIPS estimates of a ranking's per-slot CTR on logged impressions.

    Parameters
    ----------
    impressions : iterable of LoggedImpression
        Joined impressions (:func:`~reco_fast.serve.impressions.load_joined`).
    rank : callable
        ``rank(record) -> product ids`` in position order: the candidate's
        deterministic list for the logged request (``record["session"]`` etc.).
    clip : float >= 1
        Largest importance weight (``math.inf``: no clipping, unbiased).
    ci : "normal" or "bootstrap"
        Interval method (see the module docstring).
    level : 0.9, 0.95 or 0.99
        Confidence level.
    n_boot, seed : int
        Bootstrap resamples and seed.

    Returns
    -------
    dict
        ``ips``, ``ips_ci``, ``ips_se``, ``snips``, ``snips_ci``, ``snips_se``,
        ``requests``, ``slots`` (candidate slots), ``matched_slots``,
        ``clipped``, ``unsupported_slots``, ``logged_ctr`` (clicks per shown slot
        of the logging policy), ``clip``, ``ci``, ``level``.
    """
    if not (isinstance(clip, (int, float)) and clip >= 1):
        raise ValueError(f"clip must be a number >= 1, got {clip!r:.40}")
    if ci not in ("normal", "bootstrap"):
        raise ValueError(f"ci must be 'normal' or 'bootstrap', got {ci!r:.40}")
    if level not in _Z:
        raise ValueError(f"level must be one of {sorted(_Z)}, got {level!r:.40}")
    ys: list[float] = []
    d_ips: list[float] = []
    d_sn: list[float] = []
    slots = matched = clipped = unsupported = logged_shown = logged_clicks = 0
    matrices: dict[int, Any] = {}
    for imp in impressions:
        rec = imp.record
        shown = rec["shown"]
        logged_shown += len(shown)
        logged_clicks += sum(1 for s in shown if s["product_id"] in imp.clicked)
        chosen = list(rank(rec))
        y = w_sum = 0.0
        for p, pid in enumerate(chosen):
            slots += 1
            s = shown[p] if p < len(shown) else None
            if s is not None and s["product_id"] == pid:
                q = float(s["propensity"])
                if not q > 0:
                    raise InputError(
                        f"request {rec['request_id']!r}: shown product {pid!r} has "
                        f"propensity {q!r}; the log is damaged"
                    )
                w = 1.0 / q
                if w > clip:
                    w = float(clip)
                    clipped += 1
                matched += 1
                w_sum += w
                if pid in imp.clicked:
                    y += w
            elif _logging_propensity(rec, pid, p, matrices) <= 0.0:
                unsupported += 1
        ys.append(y)
        d_ips.append(float(len(chosen)))
        d_sn.append(w_sum)
    y_arr, di, ds = np.asarray(ys), np.asarray(d_ips), np.asarray(d_sn)
    z = _Z[level]
    ips, ips_ci, ips_se = _ratio_ci(y_arr, di, z)
    snips, snips_ci, snips_se = _ratio_ci(y_arr, ds, z)
    if ci == "bootstrap" and len(y_arr) >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(y_arr), size=(n_boot, len(y_arr)))
        alpha = (1 - level) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            b_ips = y_arr[idx].sum(axis=1) / di[idx].sum(axis=1)
            b_sn = y_arr[idx].sum(axis=1) / ds[idx].sum(axis=1)
        ips_ci = tuple(np.nanquantile(b_ips, [alpha, 1 - alpha]).tolist())
        snips_ci = tuple(np.nanquantile(b_sn, [alpha, 1 - alpha]).tolist())
    return {
        "ips": ips,
        "ips_ci": list(ips_ci),
        "ips_se": ips_se,
        "snips": snips,
        "snips_ci": list(snips_ci),
        "snips_se": snips_se,
        "requests": len(ys),
        "slots": slots,
        "matched_slots": matched,
        "clipped": clipped,
        "unsupported_slots": unsupported,
        "logged_ctr": logged_clicks / logged_shown if logged_shown else math.nan,
        "clip": float(clip),
        "ci": ci,
        "level": level,
    }


def model_ranker(
    model: Any, k: int | None = None, threshold: float | None = None
) -> Callable[[Mapping[str, Any]], list[str]]:
    """``rank(record)``: the model's top products for a logged request.

    Uses the logged session, the logged ``k`` and ``threshold`` (unless given
    here) and the logged ``options`` (``candidates``, ``exclude``).
    """

    def rank(record: Mapping[str, Any]) -> list[str]:
        kk = int(record["k"]) if k is None else k
        t = record.get("threshold") if threshold is None else threshold
        options = record.get("options") or {}
        try:
            recs = model.recommend(record["session"], kk, t, **options)
        except InputError as exc:
            raise InputError(
                f"request {record.get('request_id')!r}: the candidate cannot score the "
                f"logged session: {exc}",
                field=exc.field,
            ) from exc
        return [r.product_id for r in recs]

    return rank


def evaluate_model(
    model: Any,
    impressions: str | os.PathLike[str] | LogRead | Sequence[LoggedImpression],
    *,
    k: int | None = None,
    threshold: float | None = None,
    variant: str | None = None,
    window: float = DEFAULT_CLICK_WINDOW,
    **kwargs: Any,
) -> dict[str, Any]:
    """Estimate a model's per-slot CTR on a logged directory (or joined impressions).

    ``variant`` keeps only that variant's impressions; ``k`` / ``threshold``
    override the logged ones; other keyword arguments go to :func:`estimate`.
    The result adds ``log`` (the join counts) when a directory is read.
    """
    counts = None
    if isinstance(impressions, (str, os.PathLike, LogRead)):
        impressions, counts = load_joined(impressions, window)
    selected = [i for i in impressions if variant is None or i.variant == variant]
    if not selected:
        raise InputError(
            "no impressions to evaluate on"
            + (f" for variant {variant!r}" if variant is not None else "")
        )
    out = estimate(selected, model_ranker(model, k, threshold), **kwargs)
    if counts is not None:
        out["log"] = counts
    return out
