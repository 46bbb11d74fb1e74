"""Calibrated probabilities: a monotone map applied to the compiled raw margin (numpy only).

A page-view model built with calibration (``python build_model.py``, the default
``--calibration sigmoid``) serves, from :meth:`Model.predict_proba` and every other
probability entry point (``predict_proba_features``, ``score_batch``, ``recommend``,
the trackers, ``reco-fast score``, the service), the probability of scikit-learn's
``CalibratedClassifierCV`` fitted on held-out rows the model did not train on.
:meth:`Model.decision_function` still returns the compiled raw margin, exactly
scikit-learn's ``GradientBoostingClassifier.decision_function``; the calibration is
a monotone map of that margin, recorded in ``metadata.json`` (so covered by its
sha256) as ``{"method": "sigmoid", "a": a, "b": b}`` or
``{"method": "isotonic", "x": [...], "y": [...]}``:

* ``sigmoid`` (Platt): ``p = 1 / (1 + exp(a * margin + b))`` with ``a < 0``, what
  scikit-learn's ``_SigmoidCalibration.predict`` computes (``expit(-(a * margin + b))``).
  Strictly increasing, so it keeps the model's ranking of products.
* ``isotonic``: ``p = np.interp(margin, x, y)`` (clipped to the end points, as
  scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` does), ``x`` strictly
  increasing, ``y`` non-decreasing. Non-decreasing only: products whose margins fall
  on one flat step get the same probability and are ordered by catalog position.

The map is evaluated with numpy's ufuncs for one row and for many alike, so a page
view scored alone and in a batch get the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["METHODS", "Calibration"]

METHODS = ("sigmoid", "isotonic")
MAX_BREAKPOINTS = 100_000
"""An isotonic map longer than this is refused as malformed metadata."""


@dataclass(frozen=True, eq=False)
class Calibration:
    """A monotone map from raw margins (log-odds) to calibrated click probabilities.

    Build one with :meth:`from_json`; call it on a float64 array of margins.
    """

    method: str
    a: float = math.nan
    b: float = math.nan
    x: np.ndarray = field(default_factory=lambda: np.empty(0))
    y: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of an ndarray of float64 margins (same shape, float64)."""
        if self.method == "sigmoid":
            z = self.a * margin + self.b
            if not (z.size and np.max(z) >= 700.0):  # exp(z) is finite: nothing to silence
                return 1.0 / (1.0 + np.exp(z))
            with np.errstate(over="ignore"):  # exp overflow -> inf -> probability 0.0
                return 1.0 / (1.0 + np.exp(z))
        return np.interp(margin, self.x, self.y)

    def one(self, margin: float) -> float:
        """The calibrated probability of one margin: the same operations, so the same bits,
        as :meth:`__call__` (numpy's ufuncs on a scalar), in under a microsecond."""
        if self.method == "sigmoid":
            z = self.a * margin + self.b
            if z < 700.0:  # exp(z) is finite: no overflow to silence
                return float(1.0 / (1.0 + np.exp(z)))
            with np.errstate(over="ignore"):
                return float(1.0 / (1.0 + np.exp(z)))
        return float(np.interp(margin, self.x, self.y))

    def to_json(self) -> dict[str, Any]:
        """The metadata.json form (JSON-native)."""
        if self.method == "sigmoid":
            return {"method": "sigmoid", "a": self.a, "b": self.b}
        return {"method": "isotonic", "x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_json(cls, obj: Any) -> Calibration | None:
        """The calibration a metadata entry describes; None for None (no calibration).

        Raises
        ------
        ValueError
            ``obj`` is not a known method with finite parameters that make an
            increasing map into [0, 1] (sigmoid: ``a < 0``; isotonic: ``x`` strictly
            increasing, ``y`` non-decreasing in [0, 1], as many ``y`` as ``x``).
        """
        if obj is None:
            return None
        if not isinstance(obj, Mapping) or obj.get("method") not in METHODS:
            raise ValueError(
                f"calibration must be null or have a method in {list(METHODS)}, got "
                f"{str(obj)[:60]!r}"
            )
        if obj["method"] == "sigmoid":
            a, b = obj.get("a"), obj.get("b")
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in (a, b)
            ):
                raise ValueError("sigmoid calibration needs finite numbers a and b")
            if not a < 0:  # type: ignore[operator]
                raise ValueError(
                    f"sigmoid calibration needs a < 0 (an increasing map), got a={a!r:.20}"
                )
            return cls("sigmoid", a=float(a), b=float(b))  # type: ignore[arg-type]
        x, y = obj.get("x"), obj.get("y")
        if (
            not isinstance(x, list)
            or not isinstance(y, list)
            or not 1 <= len(x) <= MAX_BREAKPOINTS
            or len(x) != len(y)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*x, *y))
        ):
            raise ValueError("isotonic calibration needs lists x and y of equal length, 1 or more")
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if not (
            np.all(np.isfinite(xs))
            and np.all(np.diff(xs) > 0)
            and np.all(np.diff(ys) >= 0)
            and np.all((ys >= 0) & (ys <= 1))
        ):
            raise ValueError(
                "isotonic calibration needs finite x strictly increasing and y non-decreasing "
                "in [0, 1]"
            )
        return cls("isotonic", x=xs, y=ys)


FAST_EXTRA = 16
"""Products beyond ``k`` the compiled top-k returns for :func:`top_k` to check its answer."""
_P_SLACK = 1e-12  # probability units: far above the few ulps of any exp, log or division here
_M_SLACK = 1e-9  # margin units: far above the 1e-12 margins are verified to (compiler/driver.py)


def _raw_threshold(cal: Calibration, t: float) -> float:
    """An uncalibrated-probability threshold that every product whose calibrated
    probability is at least ``t`` clears (sigmoid maps; a lower bound, never exact)."""
    u, q = t - _P_SLACK, (1.0 - t) + _P_SLACK  # G(m) >= u, with 1 - u computed without loss
    if u <= 0.0:
        return 0.0
    m_t = (math.log(q) - math.log(u) - cal.b) / cal.a - _M_SLACK  # G(m_t) = u, minus slack
    if m_t < -700.0:
        return 0.0
    return max(0.0, 1.0 / (1.0 + math.exp(-m_t)) - _P_SLACK) if m_t < 700.0 else 1.0 - _P_SLACK


def top_k(
    model: Any,
    row: Any,
    viewed_pos: list[int],
    drop_pos: list[int],
    cand: np.ndarray | None,
    threshold: float,
    k: int,
) -> tuple[list[int], list[float]] | None:
    """Whole-catalog top k by calibrated probability, through the compiled top-k.

    ``Model._top_candidates`` for a calibrated model: the same arguments and answer
    (catalog positions and calibrated probabilities, best first, ties by position in
    the candidate order), or None for the caller's numpy path, which scores every
    candidate (an isotonic map, or no compiled top-k in the artifact).

    For a sigmoid map, in at most two compiled calls (through the threshold cells of a
    large catalog, which bound uncalibrated probabilities):

    1. the ``k + FAST_EXTRA`` best by uncalibrated probability at a threshold every
       product that can pass ``threshold`` clears (:func:`_raw_threshold`); their
       calibrated probabilities come from their margins, exactly as ``predict_proba``
       computes them. The answer stands if the kernel returned every product above its
       threshold, or if the last kept strictly beats the highest calibrated probability
       a product the kernel ranked lower can have (its margin bounded from the
       kernel's last probability);
    2. otherwise (ties or near ties at the cut), every product whose uncalibrated
       probability can reach the k-th calibrated one found (or ``threshold`` when fewer
       than k passed): a superset of the answer, sorted exactly.
    """
    cal = model.calibration
    kernel = model._raw_recommend_kernel
    builder = model._builder
    if cal.method != "sigmoid" or kernel is None or builder is None or builder.catalog is None:
        return None
    n_pool = len(builder.catalog) if cand is None else len(cand)
    raw = object.__new__(type(model))  # this model, uncalibrated (its cells bound those)
    raw.__dict__.update(model.__dict__)
    raw.calibration, raw._recommend_kernel = None, kernel
    viewed = np.zeros(len(builder.catalog), dtype=bool)
    viewed[viewed_pos] = True
    where = None if cand is None else {int(v): i for i, v in enumerate(cand.tolist())}

    def best(
        t_raw: float, fetch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]] | None:
        """The kernel's ``fetch`` best at ``t_raw``: positions, calibrated probabilities,
        their top k by (calibrated, candidate order) at ``threshold``, and the kernel's
        uncalibrated probabilities."""
        picked = raw._top_candidates(row, viewed_pos, drop_pos, cand, t_raw, fetch)
        if picked is None:
            return None
        positions, p = picked
        pos = np.asarray(positions, dtype=np.int64)
        rest = builder.candidate_rest(row, pos, viewed)
        X = np.empty((len(pos), model.n_features), dtype=np.float64)
        X[:, : len(row)] = row
        X[:, len(row) :] = rest.T
        c = cal(model._margin_f64(X)) if len(pos) else np.empty(0)
        order = pos if where is None else np.asarray([where[v] for v in positions], np.int64)
        keep = np.flatnonzero(c >= threshold)
        return pos, c, keep[np.lexsort((order[keep], -c[keep]))][:k], p

    t_raw = _raw_threshold(cal, threshold)
    fetch = min(k + FAST_EXTRA, n_pool)
    first = best(t_raw, fetch)
    if first is None:
        return None
    pos, c, top, p = first
    if len(pos) < fetch or fetch == n_pool:  # every product above t_raw: complete
        return pos[top].tolist(), c[top].tolist()
    p_last = p[-1]
    if p_last < 1.0 - 1e-6:  # else saturated: no bound on the margins from p
        m_hi = (-math.inf if p_last <= 0.0 else math.log(p_last) - math.log1p(-p_last)) + 1e-6
        ceiling = cal.one(m_hi) + _P_SLACK  # of every product the kernel ranked lower
        if (len(top) == k and c[top[-1]] > ceiling) or (len(top) < k and ceiling < threshold):
            return pos[top].tolist(), c[top].tolist()
    cut = float(c[top[-1]]) if len(top) == k else threshold
    second = best(_raw_threshold(cal, cut), n_pool)
    if second is None:
        return None
    pos, c, top, _ = second
    return pos[top].tolist(), c[top].tolist()
