"""Top-k recommendations for one live session, scored in one compiled call.

The candidate matrix is the session's features broadcast against the
catalog's (a precomputed template per catalog), so scoring 250 products costs a
few numpy operations and one trip into C, not a Python loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from reco_fast.errors import InputError, shown
from reco_fast.features.page import MIN_PRICE_FOR_RATIO
from reco_fast.features.schema import as_number

if TYPE_CHECKING:
    from reco_fast.features.page import FeatureBuilder


class Scorer(Protocol):
    """What :func:`recommend` needs from a model: the contract between the two.

    :class:`reco_fast.Model` implements it; so do the benchmarks' peers, which put
    another evaluator behind the same recommend code.

    Attributes and methods
    ----------------------
    builder
        The page-view :class:`~reco_fast.features.page.FeatureBuilder` (vocabularies,
        catalog, the feature code).
    threshold
        The default minimum probability (float).
    _top_candidates(row, viewed_pos, drop_pos, cand, threshold, k)
        The compiled top-k: ``(catalog positions, probabilities)`` best first, ties by
        catalog order, or None when there is no compiled kernel.
    _predict_prefix(prefix, rest)
        Probabilities of rows ``prefix + rest[:, i]`` (``rest`` feature-major float64):
        the numpy path when ``_top_candidates`` returns None.
    """

    @property
    def builder(self) -> FeatureBuilder: ...

    threshold: float

    def _top_candidates(
        self,
        row: Sequence[float],
        viewed_pos: list[int],
        drop_pos: list[int],
        cand: np.ndarray | None,
        threshold: float,
        k: int,
    ) -> tuple[list[int], list[float]] | None: ...

    def _predict_prefix(self, prefix: Sequence[float], rest: np.ndarray) -> np.ndarray: ...


__all__ = ["CART_FIELD", "EXCLUDABLE", "Recommendation", "Scorer", "recommend"]

CART_FIELD = "cart_product_ids"
"""Optional session key: the products in the cart (the tracker fills it)."""
EXCLUDABLE = ("viewed", "in_cart")
AFFORDABLE_RATIO = 0.5


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One product to show, how likely it is to be clicked, and why in a few words.

    Attributes
    ----------
    product_id : str
        The catalog's id.
    probability : float
        The model's output for this session and product: the click probability of a
        classifier (calibrated if the artifact is), the score of a ranker.
    reason : str
        A short, human explanation from the product's relation to the session.
    """

    product_id: str
    probability: float
    reason: str


_DEFAULT_EXCLUDE = frozenset(EXCLUDABLE)


def _check_args(
    k: Any, threshold: Any, exclude: Iterable[str]
) -> tuple[int, float, frozenset[str] | set[str]]:
    if (
        type(k) is int
        and k >= 0
        and type(threshold) is float
        and 0.0 <= threshold <= 1.0
        and exclude is EXCLUDABLE
    ):
        return k, threshold, _DEFAULT_EXCLUDE  # the common call, checked in a few comparisons
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InputError(f"k must be a non-negative integer, got {shown(k)}", field="k")
    # any real number (np.int64(0), a Fraction, a 0-d array...) by the rules every
    # value follows (schema.as_number); a bool is a mistake, not a threshold
    t = None if isinstance(threshold, (bool, np.bool_)) else as_number(threshold)
    if t is None or not (0.0 <= t <= 1.0):
        raise InputError(
            f"threshold must be a number in [0, 1], got {shown(threshold)}", field="threshold"
        )
    if isinstance(exclude, str):
        exclude = (exclude,)
    try:
        exclude = set(exclude)
    except TypeError:  # None, a number, unhashable items
        raise InputError(
            f"exclude must be a list drawn from {list(EXCLUDABLE)}, got {shown(exclude)}",
            field="exclude",
        ) from None
    unknown = exclude - set(EXCLUDABLE)
    if unknown:
        raise InputError(
            f"exclude has unknown value(s) {shown(sorted(unknown, key=repr))}; "
            f"choose from {list(EXCLUDABLE)}",
            field="exclude",
        )
    return int(k), t, exclude


def _reason(
    cat: float,
    session_cat: float,
    cart_cats: set[float],
    browsed_cats: set[float],
    price_ratio: float,
) -> str:
    if cat == session_cat:
        return "same category as the viewed product"
    if cat in cart_cats:
        return "goes with what is in the cart"
    if cat in browsed_cats:
        return "matches what this session browsed"
    if price_ratio <= AFFORDABLE_RATIO:
        return "an affordable add-on"
    return "popular with shoppers like this one"


def recommend(
    model: Scorer,
    session: Mapping[str, Any],
    k: int = 3,
    threshold: float | None = None,
    candidates: Sequence[str] | None = None,
    exclude: Iterable[str] = EXCLUDABLE,
) -> list[Recommendation]:
    """At most k products at or above the threshold, most likely click first.

    An empty list is a valid answer: below the threshold, showing nothing beats
    showing a poor recommendation (the seed's high-confidence filter).

    Viewed and in-cart products that are not in the model's catalog (delisted by
    :meth:`Model.with_catalog` while the session was live) are skipped: they are
    neither excluded nor used for reasons. Candidates must be in the catalog.
    """
    builder = model.builder
    if not builder.ranks_products:
        raise ValueError(
            f"this model was trained on the {builder.feature_set!r} feature set, which has no "
            "candidate-product features: it scores a page view but cannot rank products. "
            "Rebuild with --features ranking to recommend."
        )
    k, threshold, exclude = _check_args(
        k, model.threshold if threshold is None else threshold, exclude
    )
    if not isinstance(session, Mapping):
        raise TypeError(f"a session must be a mapping, got {type(session).__name__}")
    row = builder.session_row(session)
    catalog = builder.required_catalog
    position = catalog.position
    viewed_pos = [p for p in map(position, builder.viewed_ids(session)) if p is not None]
    cart_ids = session.get(CART_FIELD) or ()
    if isinstance(cart_ids, str) or not isinstance(cart_ids, Sequence):
        raise InputError(f"{CART_FIELD!r} must be a list of product ids", field=CART_FIELD)
    cart_pos = []
    for p in cart_ids:  # like viewed products, one no longer in the catalog is skipped
        if not isinstance(p, str):
            raise InputError(
                f"{CART_FIELD!r} must be a list of product ids (strings), got an item of "
                f"type {type(p).__name__}",
                field=CART_FIELD,
            )
        pos = position(p)
        if pos is not None:
            cart_pos.append(pos)

    drop_pos = (viewed_pos if "viewed" in exclude else []) + (
        cart_pos if "in_cart" in exclude else []
    )
    cand = None
    if candidates is not None:
        if isinstance(candidates, str) or not isinstance(candidates, Sequence):
            raise InputError("candidates must be a list of product ids", field="candidates")
        cand = np.fromiter(
            (catalog.index(p, "candidates") for p in candidates),
            dtype=np.int64,
            count=len(candidates),
        )
        _, first = np.unique(cand, return_index=True)
        cand = cand[np.sort(first)]  # a product listed twice is recommended once
    if k == 0 or (cand is not None and cand.size == 0):
        return []

    picked = model._top_candidates(row, viewed_pos, drop_pos, cand, threshold, k)
    if picked is None:  # no compiled recommend kernel: the same steps in numpy
        n = len(catalog)
        viewed = np.zeros(n, dtype=bool)
        viewed[viewed_pos] = True
        drop = np.zeros(n, dtype=bool)
        drop[drop_pos] = True
        pool = builder.all_positions if cand is None else cand
        pool = pool[~drop[pool]]
        rest = builder.candidate_rest(row, pool, viewed)
        proba = model._predict_prefix(row, rest)
        keep = np.flatnonzero(proba >= threshold).tolist()
        top = sorted(keep, key=lambda i: (-proba[i], i))[:k]  # ties: catalog order
        picked = (pool[top].tolist(), proba[top].tolist())
    codes = builder.category_codes
    ids = builder.product_id_list
    prices = builder.price_list
    cart_cats = {codes[p] for p in cart_pos}
    browsed = {codes[p] for p in viewed_pos}
    denominator = max(row[1], MIN_PRICE_FOR_RATIO)
    out = []
    for pos, p in zip(*picked, strict=True):
        reason = _reason(codes[pos], row[0], cart_cats, browsed, prices[pos] / denominator)
        out.append(Recommendation(str(ids[pos]), float(p), reason))
    return out
