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
            with np.errstate(over="ignore"):  # exp overflow -> inf -> probability 0.0
                return 1.0 / (1.0 + np.exp(self.a * margin + self.b))
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
