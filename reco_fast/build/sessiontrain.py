"""Training an event-log model: item tables, training rows with sampled negatives, the fit.

Build side (numpy, pandas, scikit-learn). The input is the canonical event
frame of :func:`reco_fast.build.events.read_events`: ``session_id, ts, type,
product_id`` and optionally ``category`` and ``price``, one row per event,
sorted by session and time.

Training rows (no impressions in the log): at every event of a training
session that has a *next different product* viewed or carted, the positive is
that product and ``n_negatives`` negatives are sampled, a share ``hard_share``
of them "hard" (the current product's co-visitation neighbours and products of
its category, the candidates a ranker must tell apart) and the rest by
popularity. Each page view is one group (``groups``), so LambdaMART can train on
the same rows. Features are computed by :func:`reco_fast.features.events.feature_matrix`
with the session's own contribution to the tables left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from reco_fast.features.events import (
    COVIS_WINDOW,
    UNKNOWN_PRICE,
    ItemTables,
    Own,
    feature_matrix,
    retrieve,
)

__all__ = [
    "LAMBDARANK_PARAMS",
    "OBJECTIVES",
    "TrainingRows",
    "fit_lambdarank",
    "fit_tables",
    "session_sequences",
    "training_rows",
]

OBJECTIVES = ("binary", "lambdarank")
"""What ``reco-fast build --events ... --objective`` trains: ``binary``, scikit-learn's
GradientBoostingClassifier (the click probability of a product, negatives sampled);
``lambdarank``, LightGBM's LambdaMART ranker (one group per page view)."""

LAMBDARANK_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "n_estimators": 100,
    "num_leaves": 15,
    "max_depth": 4,
    "learning_rate": 0.1,
    "min_child_samples": 20,
    "lambdarank_truncation_level": 10,
    "n_jobs": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
"""LambdaMART with the classifier's budget (100 trees of depth at most 4, learning rate
0.1); NDCG truncated at the evaluation's k of 10; one thread and LightGBM's
deterministic mode, so a build is reproducible."""

TOUCH_TYPES = ("view", "cart", "purchase")


@dataclass(frozen=True)
class Sequence_:
    """One session as positions: products touched (most recent last) and the cart after each."""

    session_id: str
    touched: np.ndarray  # int64 positions (-1 unknown)
    carts: list[np.ndarray]  # cart positions after each touched event


def session_sequences(events: Any, tables: ItemTables) -> Iterator[Sequence_]:
    """Each session's touched products and carts, as catalog positions."""
    pos = tables.positions(events["product_id"].tolist())
    types = events["type"].to_numpy()
    sessions = events["session_id"].to_numpy()
    start = 0
    n = len(events)
    while start < n:
        end = start
        while end < n and sessions[end] == sessions[start]:
            end += 1
        touched: list[int] = []
        carts: list[np.ndarray] = []
        cart: list[int] = []
        for i in range(start, end):
            t, p = types[i], int(pos[i])
            if t == "cart" and p not in cart:
                cart.append(p)
            elif t == "remove" and p in cart:
                cart.remove(p)
            if t in TOUCH_TYPES:
                touched.append(p)
                carts.append(np.asarray(cart, dtype=np.int64))
        yield Sequence_(str(sessions[start]), np.asarray(touched, dtype=np.int64), carts)
        start = end


def _own_pairs(touched: np.ndarray) -> dict[tuple[int, int], float]:
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    for i in range(len(touched)):
        for d in range(1, COVIS_WINDOW + 1):
            j = i + d
            if j >= len(touched):
                break
            a, b = int(touched[i]), int(touched[j])
            if a < 0 or b < 0 or a == b:
                continue
            pairs[(a, b)] += 1.0 / d
            pairs[(b, a)] += 1.0 / d
    return pairs


def fit_tables(events: Any) -> ItemTables:
    """Learn the item tables (catalog, popularity, co-visitation) from training events.

    A product's category is its most frequent one in the log; its price the
    median of its known prices (``UNKNOWN_PRICE`` if none).
    """
    touch = events[events["type"].isin(TOUCH_TYPES)]
    ids = np.asarray(sorted(set(touch["product_id"].tolist())), dtype=object)
    has_category = "category" in events.columns
    has_price = "price" in events.columns
    index = {p: i for i, p in enumerate(ids.tolist())}
    n = len(ids)
    category = np.full(n, -1, dtype=np.int64)
    if has_category:
        cats = touch[["product_id", "category"]].dropna()
        vocab = {c: k for k, c in enumerate(sorted(set(cats["category"].astype(str))))}
        top = cats.groupby("product_id")["category"].agg(lambda s: s.astype(str).mode().iloc[0])
        for p, c in top.items():
            category[index[p]] = vocab[c]
        unknown = category < 0  # a product never seen with a category is its own
        category[unknown] = len(vocab) + np.arange(int(unknown.sum()))
    price = np.full(n, UNKNOWN_PRICE)
    if has_price:
        known = touch[["product_id", "price"]].dropna()
        known = known[known["price"] >= 0]
        for p, v in known.groupby("product_id")["price"].median().items():
            price[index[p]] = float(v)
    popularity = np.zeros(n)
    np.add.at(popularity, np.asarray([index[p] for p in touch["product_id"].tolist()]), 1.0)
    stub = ItemTables(
        ids,
        category,
        price,
        popularity,
        np.zeros(n + 1, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0),
        has_category,
        has_price,
    )
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    for seq in session_sequences(events, stub):
        for key, w in _own_pairs(seq.touched).items():
            pairs[key] += w
    if pairs:
        keys = np.asarray(list(pairs.keys()), dtype=np.int64)
        weights = np.asarray(list(pairs.values()), dtype=np.float64)
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        keys, weights = keys[order], weights[order]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(indptr, keys[:, 0] + 1, 1)
        indptr = np.cumsum(indptr)
        indices = keys[:, 1].copy()
    else:
        indptr, indices, weights = np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return ItemTables(
        ids, category, price, popularity, indptr, indices, weights, has_category, has_price
    )


@dataclass(frozen=True)
class TrainingRows:
    X: np.ndarray  # (n_rows, n_features) float64
    y: np.ndarray  # (n_rows,) int: 1 for the next product, 0 for a sampled negative
    groups: np.ndarray  # (n_rows,) int: one group per page view
    negatives: dict[str, Any]  # how negatives were sampled (recorded in the report)


def next_targets(touched: np.ndarray) -> list[tuple[int, int]]:
    """(event index, position of the next different product) for every event that has one."""
    out = []
    for i in range(len(touched) - 1):
        for j in range(i + 1, len(touched)):
            if touched[j] != touched[i]:
                out.append((i, int(touched[j])))
                break
    return out


def training_rows(
    events: Any,
    tables: ItemTables,
    *,
    n_random: int = 5,
    seed: int = 0,
) -> TrainingRows:
    """Rows for every training page view with a next different product (see the module doc)."""
    rng = np.random.default_rng(seed)
    n = len(tables)
    prob = np.full(n, 1.0 / n)
    Xs, ys, gs = [], [], []
    group = 0
    for seq in session_sequences(events, tables):
        targets = next_targets(seq.touched)
        if not targets:
            continue
        own_pairs = _own_pairs(seq.touched)
        own_pop: dict[int, float] = defaultdict(float)
        for p in seq.touched.tolist():
            if p >= 0:
                own_pop[p] += 1.0
        own = Own(own_pairs, own_pop)

        def known_elsewhere(p: int, own_pop: dict[int, float] = own_pop) -> bool:
            # at serving the catalog holds products seen in *other* sessions only
            return p >= 0 and tables.popularity[p] - own_pop.get(p, 0.0) > 0

        for i, target in targets:
            if not known_elsewhere(target):
                continue  # no ranker could know this product without this very session
            touched = seq.touched[: i + 1]
            retrieved = retrieve(tables, touched, seq.carts[i], own=own)
            if target not in set(retrieved.tolist()):
                continue  # serving ranks retrieved products only: no positive to learn from
            easy = rng.choice(n, size=n_random, p=prob).tolist()
            negs = [
                p
                for p in dict.fromkeys([*retrieved.tolist(), *easy])
                if p != target and p != int(touched[-1]) and known_elsewhere(p)
            ]
            cand = np.asarray([target, *negs], dtype=np.int64)
            X = feature_matrix(tables, touched, seq.carts[i], cand, own)
            Xs.append(X)
            y = np.zeros(len(cand), dtype=np.int64)
            y[0] = 1
            ys.append(y)
            gs.append(np.full(len(cand), group))
            group += 1
    if not Xs:
        from reco_fast.errors import InputError

        raise InputError(
            "the training events have no session with two different products in a row; "
            "nothing to learn which product comes next",
            field="session",
        )
    return TrainingRows(
        np.concatenate(Xs),
        np.concatenate(ys),
        np.concatenate(gs),
        {"retrieved": "sessionmodel.retrieve", "n_random": n_random, "seed": seed},
    )


def fit_lambdarank(
    rows: TrainingRows, params: dict[str, Any] | None = None, seed: int = 0
) -> tuple[Any, float]:
    """Fit LightGBM's LambdaMART (``LGBMRanker``) on the training rows, one group per
    page view (the positive is relevance 1, the sampled negatives 0).

    Parameters
    ----------
    rows : TrainingRows
        From :func:`training_rows`; its groups are contiguous and numbered from 0.
    params : dict, optional
        Overrides of :data:`LAMBDARANK_PARAMS`.
    seed : int
        LightGBM's ``random_state``.

    Returns
    -------
    (LGBMRanker, float)
        The fitted ranker and the training wall time in seconds.

    Raises
    ------
    ImportError
        LightGBM is not installed (``pip install 'reco_fast[lightgbm]'``).
    """
    import time

    try:
        import lightgbm
    except ImportError:
        raise ImportError(
            "--objective lambdarank trains with LightGBM: pip install 'reco_fast[lightgbm]'"
        ) from None
    groups = np.asarray(rows.groups)
    if groups.size and np.any(np.diff(groups) < 0):
        raise ValueError("training rows must be ordered by group")
    sizes = np.bincount(groups)
    sizes = sizes[sizes > 0]
    model = lightgbm.LGBMRanker(**{**LAMBDARANK_PARAMS, "random_state": seed, **(params or {})})
    start = time.perf_counter()
    model.fit(rows.X, rows.y, group=sizes)
    return model, time.perf_counter() - start
