"""Features for models trained on raw event logs: what products go together.

A model built with ``--events`` ranks products for a session given as the
sequence of products it touched, most recent last (views and cart additions),
plus its cart. Its features come from per-product tables learned from the
training events and stored in the artifact (:class:`ItemTables`):

- **co-visitation**: for every pair of products seen within
  ``COVIS_WINDOW`` events of each other in a training session, a weight of
  ``1 / distance`` (both directions); the candidate's weight from the current
  product (``cv_cur``), the time-decayed sum from the previous products
  (``cv_prev``, decay ``PREV_DECAY`` per step back) and from the cart (``cv_cart``);
- **popularity**: the candidate's training event count (``pop``);
- **category affinity** (when the log has categories): the candidate is in the
  current product's category (``same_cat``); the share of the session's events
  in the candidate's category (``cat_share``);
- **price** (when the log has prices): the candidate's price, its ratio to the
  current price and to the session's mean viewed price.

A field the log lacks is absent from the model: its features are not in the
feature set. Unknown products (not in the training log) are accepted in a
session: they contribute nothing to co-visitation and count as their own
category (documented in the README). A product without a known price has price
``-1`` (``UNKNOWN_PRICE``), so its price features are negative and the trees
can tell it apart.

Every feature is one entry of the feature specification (:mod:`reco_fast.features.spec`),
and this module computes the *inputs* of those expressions with numpy, for one
session and many candidates (serving, evaluation) or for training rows, through
the same function, so training and serving agree by construction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.errors import ArtifactError, InputError
from reco_fast.features import spec as _spec

__all__ = ["COVIS_WINDOW", "PREV_DECAY", "UNKNOWN_PRICE", "ItemTables", "event_feature_set"]

COVIS_WINDOW = 3
"""Products at most this many events apart in a session co-visit."""
PREV_DECAY = 0.5
"""cv_prev weighs the product k steps before the current one by PREV_DECAY ** (k - 1)."""
N_PREV = 4
"""How many products before the current one cv_prev reads."""
UNKNOWN_PRICE = -1.0
MIN_PRICE = 0.01
TABLE_FILES = ("items.json", "covis.npz")


def _inp(name: str, source: str, doc: str) -> _spec.Input:
    return _spec.Input(name, source, doc)


def event_feature_set(has_category: bool, has_price: bool) -> _spec.FeatureSet:
    """The feature set of an event-trained model, given which optional fields the log has."""
    s_inputs = [
        _inp("n_events", "session", "events in the session so far"),
        _inp("n_distinct", "session", "distinct products in the session so far"),
        _inp("n_cart", "session cart", "products in the cart"),
    ]
    c_inputs = [
        _inp("pop", "training events", "the candidate's event count in the training log"),
        _inp("cv_cur", "training events", "co-visitation weight from the current product"),
        _inp("cv_prev", "training events", "decayed co-visitation from the previous products"),
        _inp("cv_cart", "training events", "co-visitation weight from the cart's products"),
        _inp("already", "session", "1 if the session touched the candidate before"),
        _inp("in_cart", "session cart", "1 if the candidate is in the cart"),
        _inp("rrank", "retrieval", "position in the retrieval list (NOT_RETRIEVED if absent)"),
    ]
    session = [
        _spec.Feature("n_events", "n_events", "events in the session so far"),
        _spec.Feature("n_distinct", "n_distinct", "distinct products so far"),
        _spec.Feature("n_cart", "n_cart", "products in the cart"),
    ]
    candidate = [
        _spec.Feature("popularity", "pop", "training event count"),
        _spec.Feature("covis_current", "cv_cur", "co-visitation with the current product"),
        _spec.Feature("covis_previous", "cv_prev", "decayed co-visitation with earlier products"),
        _spec.Feature("covis_cart", "cv_cart", "co-visitation with the cart"),
        _spec.Feature("already_viewed", "already", "seen earlier in the session"),
        _spec.Feature("in_cart", "in_cart", "in the cart"),
        _spec.Feature("retrieval_rank", "rrank", "position in the first-stage candidate list"),
    ]
    if has_category:
        c_inputs += [
            _inp("same_cat", "category", "1 if in the current product's category"),
            _inp("cat_share", "category", "share of the session's events in its category"),
        ]
        candidate += [
            _spec.Feature("same_category", "same_cat", "in the current product's category"),
            _spec.Feature("category_affinity", "cat_share", "session's share in its category"),
        ]
    if has_price:
        s_inputs += [
            _inp("cur_price", "price", "the current product's price (-1 unknown)"),
            _inp("mean_price", "price", "mean known price of the session's products (-1 none)"),
        ]
        c_inputs += [_inp("rprice", "price", "the candidate's price (-1 unknown)")]
        session += [_spec.Feature("current_price", "cur_price", "current product's price")]
        candidate += [
            _spec.Feature("candidate_price", "rprice", "candidate's price"),
            _spec.Feature(
                "price_ratio", f"rprice / max(cur_price, {MIN_PRICE!r})", "vs current price"
            ),
            _spec.Feature(
                "price_vs_session", f"rprice / max(mean_price, {MIN_PRICE!r})", "vs session mean"
            ),
        ]
    name = "events" + ("+category" if has_category else "") + ("+price" if has_price else "")
    return _spec.FeatureSet(
        name, tuple(session), tuple(candidate), tuple(s_inputs), tuple(c_inputs)
    )


@dataclass(frozen=True)
class ItemTables:
    """Per-product tables learned from training events; catalog order is position order.

    Attributes
    ----------
    product_ids : ndarray of str, shape (n,)
    category : ndarray of int64, shape (n,)
        Category code per product, ``-1`` when the log has no categories.
    price : ndarray of float64, shape (n,)
        Dollars; ``UNKNOWN_PRICE`` (-1) when unknown.
    popularity : ndarray of float64, shape (n,)
        Training events per product.
    covis_indptr, covis_indices, covis_weights : ndarray
        Co-visitation as CSR: the neighbours of product i are
        ``covis_indices[covis_indptr[i]:covis_indptr[i + 1]]`` with those weights.
    has_category, has_price : bool
        Which optional fields the training log had.
    """

    product_ids: np.ndarray
    category: np.ndarray
    price: np.ndarray
    popularity: np.ndarray
    covis_indptr: np.ndarray
    covis_indices: np.ndarray
    covis_weights: np.ndarray
    has_category: bool
    has_price: bool

    def __post_init__(self) -> None:
        index = {p: i for i, p in enumerate(self.product_ids.tolist())}
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.product_ids)

    @property
    def popular_order(self) -> np.ndarray:
        """Positions by popularity, most popular first (ties: catalog order)."""
        cached = self.__dict__.get("_popular_order")
        if cached is None:
            cached = np.argsort(-self.popularity, kind="stable")
            object.__setattr__(self, "_popular_order", cached)
        return cached

    def category_popular(self, category: int) -> np.ndarray:
        """Positions in one category by popularity, most popular first."""
        cache = self.__dict__.setdefault("_category_popular", {})
        got = cache.get(category)
        if got is None:
            order = self.popular_order
            got = order[self.category[order] == category]
            cache[category] = got
        return got

    @property
    def feature_set(self) -> _spec.FeatureSet:
        return event_feature_set(self.has_category, self.has_price)

    def positions(self, product_ids: Sequence[Any]) -> np.ndarray:
        """Catalog positions of ids (``-1`` for products the tables do not know)."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return np.fromiter((index.get(str(p), -1) for p in product_ids), np.int64)

    def covis_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.covis_indptr[i], self.covis_indptr[i + 1]
        return self.covis_indices[a:b], self.covis_weights[a:b]

    # ---- storage (inside an artifact; no pickle) -------------------------------------------
    def save(self, directory: Path) -> list[str]:
        """Write the tables as ``items.json`` and ``covis.npz``; returns the file names."""
        items = {
            "product_ids": self.product_ids.tolist(),
            "category": self.category.tolist(),
            "price": self.price.tolist(),
            "popularity": self.popularity.tolist(),
            "has_category": self.has_category,
            "has_price": self.has_price,
        }
        (directory / "items.json").write_text(json.dumps(items), encoding="utf-8")
        with open(directory / "covis.npz", "wb") as fh:
            np.savez(
                fh,
                indptr=self.covis_indptr,
                indices=self.covis_indices,
                weights=self.covis_weights,
            )
        return list(TABLE_FILES)

    @classmethod
    def load(cls, directory: Path) -> ItemTables:
        try:
            items = json.loads((directory / "items.json").read_text(encoding="utf-8"))
            with np.load(directory / "covis.npz", allow_pickle=False) as z:
                indptr, indices, weights = z["indptr"], z["indices"], z["weights"]
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{directory}: unreadable item tables ({exc}); rebuild") from exc
        return cls(
            np.asarray(items["product_ids"], dtype=object),
            np.asarray(items["category"], dtype=np.int64),
            np.asarray(items["price"], dtype=np.float64),
            np.asarray(items["popularity"], dtype=np.float64),
            indptr.astype(np.int64),
            indices.astype(np.int64),
            weights.astype(np.float64),
            bool(items["has_category"]),
            bool(items["has_price"]),
        )


@dataclass(frozen=True)
class Own:
    """A training session's own contribution to the tables, left out of its training rows.

    Without this, a training row's co-visitation would count the very pair it is
    asked to predict (leave-one-session-out features).
    """

    covis: Mapping[tuple[int, int], float]
    popularity: Mapping[int, float]


def session_inputs(tables: ItemTables, touched: np.ndarray, cart: np.ndarray) -> dict[str, float]:
    """The session inputs from the positions of the products touched (most recent last)."""
    out = {
        "n_events": float(len(touched)),
        "n_distinct": float(len(set(touched.tolist()))),
        "n_cart": float(len(cart)),
    }
    if tables.has_price:
        known = touched[touched >= 0]
        prices = tables.price[known]
        prices = prices[prices >= 0]
        cur = int(touched[-1]) if len(touched) else -1
        out["cur_price"] = float(tables.price[cur]) if cur >= 0 else UNKNOWN_PRICE
        out["mean_price"] = float(prices.mean()) if len(prices) else UNKNOWN_PRICE
    return out


def _add_covis(
    acc: np.ndarray, tables: ItemTables, source: int, weight: float, own: Own | None
) -> None:
    if source < 0 or weight == 0.0:
        return
    idx, w = tables.covis_row(source)
    np.add.at(acc, idx, weight * w)
    if own is not None:
        for (a, b), v in own.covis.items():
            if a == source:
                acc[b] -= weight * v


def candidate_inputs(
    tables: ItemTables,
    touched: np.ndarray,
    cart: np.ndarray,
    candidates: np.ndarray,
    own: Own | None = None,
) -> dict[str, np.ndarray]:
    """Candidate inputs for catalog positions ``candidates`` (shape (m,)), float64 each.

    ``touched`` are the session's product positions, most recent last (``-1``:
    unknown product); ``cart`` the cart's positions. ``own`` subtracts a training
    session's own contribution (training rows only).
    """
    n = len(tables)
    cv_cur = np.zeros(n)
    cv_prev = np.zeros(n)
    cv_cart = np.zeros(n)
    cur = int(touched[-1]) if len(touched) else -1
    _add_covis(cv_cur, tables, cur, 1.0, own)
    prev = [int(p) for p in touched[:-1][::-1] if p != cur]
    seen_prev: list[int] = []
    for p in prev:
        if p not in seen_prev:
            seen_prev.append(p)
        if len(seen_prev) == N_PREV:
            break
    for k, p in enumerate(seen_prev):
        _add_covis(cv_prev, tables, p, PREV_DECAY**k, own)
    for p in set(cart.tolist()):
        _add_covis(cv_cart, tables, int(p), 1.0, own)
    pop = tables.popularity[candidates].copy()
    if own is not None:
        for p, v in own.popularity.items():
            pop[candidates == p] -= v
    flags = np.zeros(n, dtype=bool)
    flags[touched[touched >= 0]] = True
    in_cart = np.zeros(n, dtype=bool)
    in_cart[cart[cart >= 0]] = True
    rank = np.full(n, NOT_RETRIEVED)
    retrieved = retrieve(tables, touched, cart, own=own)
    rank[retrieved] = np.arange(len(retrieved), dtype=np.float64)
    out = {
        "rrank": rank[candidates],
        "pop": pop,
        "cv_cur": cv_cur[candidates],
        "cv_prev": cv_prev[candidates],
        "cv_cart": cv_cart[candidates],
        "already": flags[candidates].astype(np.float64),
        "in_cart": in_cart[candidates].astype(np.float64),
    }
    if tables.has_category:
        cats = tables.category
        ccat = cats[candidates]
        cur_cat = cats[cur] if cur >= 0 else -2
        out["same_cat"] = (ccat == cur_cat).astype(np.float64)
        known = touched[touched >= 0]
        if len(touched):
            counts = np.bincount(cats[known], minlength=int(cats.max(initial=0)) + 1)
            out["cat_share"] = counts[ccat] / float(len(touched))
        else:
            out["cat_share"] = np.zeros(len(candidates))
    if tables.has_price:
        out["rprice"] = tables.price[candidates]
    return out


NOT_RETRIEVED = 1000.0
"""retrieval_rank of a product the first stage did not return."""
RETRIEVE_PER_SOURCE = 20
"""Candidates taken from each retrieval source (see :func:`retrieve`)."""


def retrieve(
    tables: ItemTables,
    touched: np.ndarray,
    cart: np.ndarray,
    n: int = RETRIEVE_PER_SOURCE,
    own: Own | None = None,
) -> np.ndarray:
    """Candidate positions for one session, the first stage of ranking (deterministic).

    The union, in this order, of: the current product's top ``n`` co-visitation
    neighbours; the top ``n`` by co-visitation with the previous products and the
    cart (``cv_prev + cv_cart``); the session's earlier products (revisits are
    common); the ``n`` most popular products of the current category; the ``n``
    most popular products. Ties by popularity, then catalog position. The
    current product itself is never a candidate. ``own`` leaves a training
    session's own co-visitation out, as in :func:`candidate_inputs`.
    """
    cur = int(touched[-1]) if len(touched) else -1
    pop_rank = tables.popular_order
    parts: list[np.ndarray] = []
    if cur >= 0:
        row = np.zeros(len(tables))
        _add_covis(row, tables, cur, 1.0, own)
        idx = np.flatnonzero(row > 1e-9)
        parts.append(idx[np.lexsort((-tables.popularity[idx], -row[idx]))][:n])
    acc = np.zeros(len(tables))
    seen: list[int] = []
    for p in touched[:-1][::-1].tolist():
        if p != cur and p >= 0 and p not in seen:
            seen.append(p)
    for k, p in enumerate(seen[:N_PREV]):
        _add_covis(acc, tables, p, PREV_DECAY**k, own)
    for p in set(cart.tolist()):
        _add_covis(acc, tables, int(p), 1.0, own)
    nz = np.flatnonzero(acc > 1e-9)
    if len(nz):
        parts.append(nz[np.lexsort((-tables.popularity[nz], -acc[nz]))][:n])
    parts.append(np.asarray(seen, dtype=np.int64))
    if tables.has_category and cur >= 0:
        parts.append(tables.category_popular(int(tables.category[cur]))[:n])
    parts.append(pop_rank[:n])
    out = np.concatenate(parts).astype(np.int64)
    _, first = np.unique(out, return_index=True)
    out = out[np.sort(first)]
    return out[out != cur]


def feature_matrix(
    tables: ItemTables,
    touched: np.ndarray,
    cart: np.ndarray,
    candidates: np.ndarray,
    own: Own | None = None,
) -> np.ndarray:
    """The (m, n_features) float64 matrix for one session and m candidate positions."""
    fs = tables.feature_set
    inputs: dict[str, Any] = dict(session_inputs(tables, touched, cart))
    inputs.update(candidate_inputs(tables, touched, cart, candidates, own))
    X = np.empty((len(candidates), len(fs.features)), dtype=np.float64)
    return _spec.numpy_columns(fs, inputs, X)


def session_positions(
    tables: ItemTables, session: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(touched, cart) positions of an event-model session dict.

    The session is ``{"products": [ids, most recent last], "cart": [ids]}``; ids
    of any type are string ids; unknown products are accepted (position -1).
    """
    if not isinstance(session, Mapping):
        raise TypeError(f"a session must be a mapping, got {type(session).__name__}")
    products = session.get("products")
    if products is None or isinstance(products, (str, bytes)) or not len(products):
        raise InputError(
            "'products' must be a non-empty list of product ids, most recent last",
            field="products",
        )
    cart = session.get("cart", ())
    if isinstance(cart, (str, bytes)):
        raise InputError("'cart' must be a list of product ids", field="cart")
    return tables.positions(list(products)), tables.positions(list(cart))


def parse_feature_set(name: str) -> _spec.FeatureSet | None:
    """The event feature set a name like ``events+category+price`` denotes, or None."""
    parts = name.split("+")
    if parts[0] != "events" or len(set(parts)) != len(parts):
        return None
    if not set(parts[1:]) <= {"category", "price"}:
        return None
    fs = event_feature_set("category" in parts, "price" in parts)
    return fs if fs.name == name else None


@dataclass(frozen=True)
class Ranked:
    """One ranked product: catalog position, probability and the strongest reason."""

    position: int
    probability: float
    reason: str


class EventBuilder:
    """Turns event-model sessions into feature rows; ranks the catalog for one session.

    A session is a dict ``{"products": [ids, most recent last], "cart": [ids]}``
    (``cart`` optional); to score one product as a recommendation add
    ``"recommended_product_id"``. Ids of any type are string ids; products the
    tables do not know are accepted (see the module doc).
    """

    ranks_products = True
    required_fields: tuple[str, ...] = ("products",)

    def __init__(self, tables: ItemTables):
        self.tables = tables
        self.spec = tables.feature_set
        self.feature_set = self.spec.name
        self.feature_names: tuple[str, ...] = self.spec.names
        self.catalog = None  # the tables are the catalog

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def viewed_ids(self, session: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(p) for p in session.get("products", ()))

    def rows(self, sessions: Sequence[Mapping[str, Any]], offset: int = 0) -> np.ndarray:
        """The (n, n_features) float64 matrix of sessions with a ``recommended_product_id``."""
        X = np.empty((len(sessions), self.n_features), dtype=np.float64)
        for r, session in enumerate(sessions):
            touched, cart = session_positions(self.tables, session)
            rec = session.get("recommended_product_id") if isinstance(session, Mapping) else None
            if rec is None or isinstance(rec, (list, tuple, dict, set)):
                raise InputError(
                    f"'recommended_product_id' is missing (row {r + offset}): name the product "
                    "to score, or call recommend() to rank the catalog",
                    field="recommended_product_id",
                    rows=[r + offset],
                )
            pos = self.tables.positions([rec])
            if pos[0] < 0:
                raise InputError(
                    f"unknown 'recommended_product_id' {str(rec)[:40]!r} (row {r + offset}): "
                    "only products of the training log can be scored",
                    field="recommended_product_id",
                    rows=[r + offset],
                )
            X[r] = feature_matrix(self.tables, touched, cart, pos)[0]
        return X

    def rank(
        self,
        score: Any,
        session: Mapping[str, Any],
        k: int,
        threshold: float,
        candidates: Sequence[Any] | None,
        exclude: Sequence[str],
    ) -> list[Ranked]:
        """The top ``k`` candidates by ``score(X)`` at or above ``threshold``, ties by position.

        Candidates are the retrieval stage's (:func:`retrieve`) unless given;
        ``exclude`` may hold ``"viewed"`` and ``"in_cart"``. The current product is
        never recommended.
        """
        touched, cart = session_positions(self.tables, session)
        if candidates is None:
            cand = retrieve(self.tables, touched, cart)
        else:
            cand = self.tables.positions(list(candidates))
            if np.any(cand < 0):
                bad = [str(c)[:40] for c, p in zip(candidates, cand, strict=True) if p < 0][:3]
                raise InputError(f"unknown candidate products {bad}", field="candidates")
            _, first = np.unique(cand, return_index=True)
            cand = cand[np.sort(first)]
        drop = {int(touched[-1])}
        if "viewed" in exclude:
            drop.update(touched.tolist())
        if "in_cart" in exclude:
            drop.update(cart.tolist())
        cand = cand[~np.isin(cand, list(drop))]
        if len(cand) == 0:
            return []
        X = feature_matrix(self.tables, touched, cart, cand)
        p = np.asarray(score(X), dtype=np.float64)
        order = np.lexsort((cand, -p))
        keep = [j for j in order if p[j] >= threshold][:k]
        names = self.feature_names
        reasons = []
        for j in keep:
            row = dict(zip(names, X[j].tolist(), strict=True))
            if row["covis_current"] > 0:
                reason = "viewed together with the current product"
            elif row["covis_previous"] > 0 or row["covis_cart"] > 0:
                reason = "viewed together with products earlier in the session"
            elif row["already_viewed"] > 0:
                reason = "viewed earlier in the session"
            elif row.get("same_category", 0.0) > 0:
                reason = "popular in the current category"
            else:
                reason = "popular"
            reasons.append(reason)
        return [
            Ranked(int(cand[j]), float(p[j]), why) for j, why in zip(keep, reasons, strict=True)
        ]

    def golden_sessions(
        self, predict: Any, pool: Sequence[Mapping[str, Any]], n: int
    ) -> dict[str, Any]:
        """The first ``n`` raw sessions of ``pool`` and ``predict``'s output for their
        feature rows: ``{"sessions": [...], "proba": [...]}`` (JSON-native).

        ``predict(X)`` is the reference library's output: a classifier's probability,
        or a ranker's score.
        """
        sessions = [dict(s) for s in pool[:n]]
        return {"sessions": sessions, "proba": predict(self.rows(sessions)).tolist()}

    def recommend_cases(
        self,
        predict: Any,
        pool: Sequence[Mapping[str, Any]],
        k: int,
        threshold: float | None = 0.0,
    ) -> Iterator[tuple[dict[str, Any], list[float]]]:
        """Candidate golden recommend cases, one per session of ``pool`` with at least
        ``k`` candidates, each with its reference probabilities (best first) for the
        compiler's near-tie check (``compiler.driver.golden_recommend_cases``).

        ``threshold`` None (a ranker's scores): every candidate is ranked, and the cases
        record no threshold.
        """
        cut = -math.inf if threshold is None else threshold
        for s in pool:
            session = {"products": list(s["products"]), "cart": list(s.get("cart", ()))}
            ranked = self.rank(predict, session, k, cut, None, ("viewed", "in_cart"))
            if len(ranked) < k:
                continue
            ps = [r.probability for r in ranked]
            case = {
                "session": session,
                "k": k,
                "threshold": threshold,
                "product_ids": [str(self.tables.product_ids[r.position]) for r in ranked],
                "proba": ps,
            }
            yield case, ps
