"""Honest offline evaluation of next-product rankers by replaying held-out sessions.

Build-time only: pandas and scipy are imported inside the functions.

Input is the canonical event table of :func:`reco_fast.build.events.read_events`
(``session_id``, ``ts``, ``type``, ``product_id``; ``category`` and ``price``
used when present).

**Split** (:func:`split_by_time`): sessions are ordered by their start time (ties
by session id); the last ``test_fraction`` of them (20% by default) are held out.
The cut time ``C`` is the start of the first held-out session; every session
starting at or after ``C`` is held out; the training side is the events before
``C`` of the sessions that started before it, so every training event precedes
every held-out event and no session contributes to both sides. A session that
started before ``C`` and was still active at ``C`` (straddling the cut) is
*truncated* by default: its events before ``C`` train (what a model trained at
``C`` would have seen), its later events are dropped and counted in the split
record. ``straddling="drop"`` drops such sessions whole; ``straddling="train"``
trains on them whole, which lets training see events after ``C`` (not honest;
for comparison only).

**Replay** (:func:`evaluate`): each held-out session is replayed event by event,
in time order. At event ``i`` the *target* is the next different product the
visitor viewed or carted: the product of the first later ``view`` or ``cart``
event whose product differs from event ``i``'s product. Events without such a
target (the end of a session) are not prediction points. At each prediction point
every ranker is asked for its top ``k`` given the session so far (events ``0..i``,
including the current one), and the target's 1-based rank ``r`` in that list
gives HitRate@k (``r <= k``), MRR@k (``1/r``, 0 if absent) and NDCG@k
(``1/log2(r + 1)``: one relevant item, so the ideal DCG is 1). Coverage is the
number of distinct catalog products recommended over the whole replay divided
by the catalog size (the catalog is the distinct products of the training and
held-out events unless given). All methods are scored on exactly the same
prediction points. The metrics are small numpy code (:func:`rank_metrics`):
scikit-learn's ``ndcg_score`` and ``top_k_accuracy_score`` need a score for
every catalog product at every prediction point, while a ranker returns a list;
the tests check :func:`rank_metrics` against ``sklearn.metrics.ndcg_score``.

This is the next-item task of session-based recommendation benchmarks (Ludewig &
Jannach, "Evaluation of session-based recommendation algorithms", 2018, and their
session-rec framework), with "next" meaning the next *different* viewed or carted
product. **Products already seen in the session are not excluded by default**
(``exclude_seen=False``): as in those benchmarks the target may be a product the
visitor returns to, and the replay records the share of such targets
(``replay.targets_seen_before``). With ``exclude_seen=True`` every ranker's list
is filtered the same way (already-seen products removed, the ranker asked for
``k + number seen``), as a recommender that never re-shows viewed products
would; such targets then count as misses. The baselines never recommend the
current product (it cannot be the target).

**Baselines** (:func:`baselines`), each fitted on the training events only:
``popular``, ``same_category_popular``, ``same_category_closest_price``,
``covisitation`` and ``session_knn`` (see each class). Every list is filled up to
``k`` with the most popular products, and ties are broken by popularity, then by
product id, so results are deterministic. Their parameters (co-visitation
window 3; session-kNN 100 neighbours from the 500 most recent candidate
sessions, the defaults of session-rec's ``ContextKNN``, with cosine similarity
where ``ContextKNN`` defaults to Jaccard) are fixed in advance, not tuned on
the held-out sessions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "BASELINES",
    "CoVisitation",
    "Event",
    "Popular",
    "Ranker",
    "SameCategoryClosestPrice",
    "SameCategoryPopular",
    "SessionKNN",
    "TrainingIndex",
    "baselines",
    "evaluate",
    "evaluate_baselines",
    "format_table",
    "rank_metrics",
    "split_by_time",
]

TARGET_TYPES = ("view", "cart")
"""Event types whose product can be a target ("viewed or carted")."""

BASELINES = (
    "popular",
    "same_category_popular",
    "same_category_closest_price",
    "covisitation",
    "session_knn",
)

_REQUIRED = ("session_id", "ts", "type", "product_id")


class Event(NamedTuple):
    """One event of a session as rankers see it."""

    ts: float
    """Seconds since 1970-01-01 UTC."""
    type: str
    """``view``, ``cart``, ``purchase`` or ``remove``."""
    product_id: str
    category: str | None
    """The event's category id, None if the log has none for it."""
    price: float
    """The event's price, NaN if unknown."""


class Ranker(Protocol):
    """A next-product ranker: the session so far -> up to ``k`` product ids, best first.

    ``session`` holds the session's events up to and including the current one,
    in time order (at least one). The list must hold distinct ``str`` ids, at most
    ``k`` of them. A plain function of ``(session, k)`` is a ranker.
    """

    def __call__(self, session: Sequence[Event], k: int) -> list[str]: ...


# ---- split --------------------------------------------------------------------------------------


def split_by_time(
    events: pd.DataFrame, test_fraction: float = 0.2, *, straddling: str = "truncate"
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Hold out the last sessions by start time; no session on both sides (module docstring).

    Parameters
    ----------
    events : pandas.DataFrame
        Canonical events (at least ``session_id`` and ``ts``, seconds).
    test_fraction : float
        Share of sessions held out, in (0, 1); the count is rounded, at least 1
        and at most ``n_sessions - 1`` (sessions starting at the same time as the
        first held-out one are held out too).
    straddling : {"truncate", "drop", "train"}
        What happens to sessions active at the cut: their events before the cut
        train (default), they are dropped, or they train whole.

    Returns
    -------
    train, test : pandas.DataFrame
        The events of each side, sorted by session then time, index reset.
    split : dict
        ``method``, ``test_fraction``, ``straddling``, ``cut_time`` (epoch
        seconds), ``cut_time_iso``, ``train``/``test`` with ``sessions`` and
        ``events``, ``straddling_sessions``, ``dropped_events`` (events not used
        on either side), ``train_last_time`` and ``test_first_time``.

    Raises
    ------
    ValueError
        A bad ``test_fraction`` or ``straddling``, missing columns, or fewer than
        2 sessions.
    """
    import pandas as pd

    _check_events(events, ("session_id", "ts"), "events")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if straddling not in ("truncate", "drop", "train"):
        raise ValueError(f"straddling must be 'truncate', 'drop' or 'train', got {straddling!r}")
    bounds = events.groupby("session_id", sort=True)["ts"].agg(["min", "max"])
    n = len(bounds)
    if n < 2:
        raise ValueError(f"events: a split needs at least 2 sessions, got {n}")
    n_test = min(max(1, round(float(test_fraction) * n)), n - 1)
    ordered = bounds.reset_index().sort_values(["min", "session_id"], kind="stable")
    cut = float(ordered["min"].iloc[n - n_test])
    start, end = bounds["min"].to_numpy(), bounds["max"].to_numpy()
    test_ids = bounds.index[start >= cut]
    active = bounds.index[(start < cut) & (end >= cut)]
    before = bounds.index[start < cut]

    sid = events["session_id"]
    in_test = sid.isin(test_ids).to_numpy()
    in_before = sid.isin(before).to_numpy()
    if straddling == "truncate":
        in_train = in_before & (events["ts"].to_numpy() < cut)
    elif straddling == "drop":
        in_train = in_before & ~sid.isin(active).to_numpy()
    else:
        in_train = in_before

    def side(mask: np.ndarray) -> pd.DataFrame:
        part = events[mask]
        return part.sort_values(["session_id", "ts"], kind="stable").reset_index(drop=True)

    train, test = side(in_train), side(in_test)
    split = {
        "method": "time, by session: the last sessions by start time are held out",
        "test_fraction": float(test_fraction),
        "straddling": straddling,
        "cut_time": cut,
        "cut_time_iso": pd.Timestamp(cut, unit="s", tz="UTC").isoformat(),
        "train": {"sessions": int(train["session_id"].nunique()), "events": len(train)},
        "test": {"sessions": len(test_ids), "events": len(test)},
        "straddling_sessions": len(active),
        "dropped_events": int(len(events) - len(train) - len(test)),
        "train_last_time": float(train["ts"].max()) if len(train) else None,
        "test_first_time": float(test["ts"].min()),
    }
    return train, test, split


# ---- metrics ------------------------------------------------------------------------------------


def rank_metrics(ranks: Sequence[int] | np.ndarray, k: int) -> dict[str, float]:
    """HitRate@k, MRR@k and NDCG@k from the targets' 1-based ranks (0 = not in the list).

    Parameters
    ----------
    ranks : array of int, shape (n_predictions,)
        Rank of the target in each list; 0 or anything above ``k`` is a miss.
    k : int
        The cut-off.

    Returns
    -------
    dict
        ``hit_rate``, ``mrr``, ``ndcg`` (floats in [0, 1]; NaN when there are no
        predictions) and ``n_predictions``.
    """
    r = np.asarray(ranks, dtype=np.int64).ravel()
    hit = (r >= 1) & (r <= k)
    safe = np.where(hit, r, 1)
    n = int(r.size)
    if n == 0:
        return {"hit_rate": math.nan, "mrr": math.nan, "ndcg": math.nan, "n_predictions": 0}
    return {
        "hit_rate": float(hit.mean()),
        "mrr": float(np.where(hit, 1.0 / safe, 0.0).mean()),
        "ndcg": float(np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0).mean()),
        "n_predictions": n,
    }


# ---- replay -------------------------------------------------------------------------------------


def _check_events(events: Any, required: Iterable[str], name: str) -> None:
    import pandas as pd

    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(events).__name__}")
    missing = [c for c in required if c not in events.columns]
    if missing:
        raise ValueError(
            f"{name}: missing column {', '.join(map(repr, missing))} "
            "(give the canonical events of reco_fast.build.events.read_events)"
        )


def _sessions(events: pd.DataFrame) -> list[tuple[Event, ...]]:
    """Events grouped by session (sessions in id order), each in time order (stable)."""
    ordered = events.sort_values(["session_id", "ts"], kind="stable")
    n = len(ordered)
    category = (
        ordered["category"].to_numpy(dtype=object) if "category" in ordered else np.full(n, None)
    )
    category = np.where(_isna(category), None, category)  # type: ignore[arg-type]
    price = (
        ordered["price"].to_numpy(dtype=np.float64)
        if "price" in ordered
        else np.full(n, np.nan, dtype=np.float64)
    )
    rows = zip(
        ordered["session_id"].to_numpy(dtype=object),
        ordered["ts"].to_numpy(dtype=np.float64).tolist(),
        ordered["type"].to_numpy(dtype=object),
        ordered["product_id"].to_numpy(dtype=object).astype(str),
        category,
        price.tolist(),
        strict=True,
    )
    out: list[tuple[Event, ...]] = []
    current: list[Event] = []
    last = object()
    for sid, ts, typ, pid, cat, pr in rows:
        if sid != last and current:
            out.append(tuple(current))
            current = []
        last = sid
        current.append(Event(ts, str(typ), str(pid), None if cat is None else str(cat), pr))
    if current:
        out.append(tuple(current))
    return out


def _isna(values: np.ndarray) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.isna(values), dtype=bool)


def _targets(session: Sequence[Event]) -> list[str | None]:
    """For each event, the next different product viewed or carted after it (None: none)."""
    out: list[str | None] = [None] * len(session)
    nearest: str | None = None  # product of the first view/cart event to the right
    other: str | None = None  # product of the first view/cart to the right that differs from it
    for i in range(len(session) - 1, -1, -1):
        product = session[i].product_id
        out[i] = nearest if nearest != product else other
        if session[i].type in TARGET_TYPES and product != nearest:
            other, nearest = nearest, product
    return out


def evaluate(
    train_events: pd.DataFrame,
    test_events: pd.DataFrame,
    rankers: Mapping[str, Ranker | Callable[[Sequence[Event], int], list[str]]],
    k: int = 10,
    *,
    split: Mapping[str, Any] | None = None,
    exclude_seen: bool = False,
    catalog: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Replay the held-out sessions through each ranker and score next-product prediction.

    Parameters
    ----------
    train_events, test_events : pandas.DataFrame
        Canonical events of each side (:func:`split_by_time`). The rankers must
        have been fitted on ``train_events`` only; ``train_events`` is used here
        for the catalog and the replay statistics.
    rankers : mapping of name -> ranker
        Each a :class:`Ranker`: ``ranker(session_so_far, k) -> list of str``.
    k : int
        List length and metric cut-off (default 10).
    split : mapping, optional
        The split record of :func:`split_by_time`, copied into the result; without
        it the result records the two sides' session and event counts.
    exclude_seen : bool
        Remove products already seen in the session from every list (module
        docstring). Default False: the standard next-item protocol.
    catalog : iterable of str, optional
        Product ids for coverage; default the products of both sides.

    Returns
    -------
    dict
        ``{"k": k, "split": {...}, "replay": {...}, "methods": {name: {"hit_rate",
        "mrr", "ndcg", "coverage", "n_predictions"}}}``; ``replay`` gives the
        protocol, ``sessions`` (held-out sessions with at least one prediction
        point), ``predictions``, ``targets_seen_before`` and
        ``targets_unknown_in_training`` (shares of prediction points) and
        ``catalog_size``. Floats are plain Python floats (JSON-ready).

    Raises
    ------
    TypeError, ValueError
        Bad arguments, or a ranker returned something other than at most ``k``
        distinct ``str`` product ids (the message names the ranker).
    """
    _check_events(train_events, _REQUIRED, "train_events")
    _check_events(test_events, _REQUIRED, "test_events")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if not isinstance(rankers, Mapping) or not rankers:
        raise ValueError("rankers must be a non-empty mapping of name -> ranker")
    for name, ranker in rankers.items():
        if not callable(ranker):
            raise TypeError(f"rankers[{name!r}] is not callable")

    train_products = set(train_events["product_id"].astype(str))
    test_products = set(test_events["product_id"].astype(str))
    catalog_ids = set(map(str, catalog)) if catalog is not None else train_products | test_products
    if not catalog_ids:
        raise ValueError("catalog is empty")

    names = list(rankers)
    ranks: dict[str, list[int]] = {name: [] for name in names}
    shown: dict[str, set[str]] = {name: set() for name in names}
    n_sessions = n_seen_before = n_unknown = 0
    for session in _sessions(test_events):
        targets = _targets(session)
        if all(t is None for t in targets):
            continue
        n_sessions += 1
        seen: set[str] = set()
        for i, target in enumerate(targets):
            seen.add(session[i].product_id)
            if target is None:
                continue
            n_seen_before += target in seen
            n_unknown += target not in train_products
            so_far = session[: i + 1]
            ask = k + len(seen) if exclude_seen else k
            for name in names:
                items = _checked(name, rankers[name](so_far, ask), ask)
                if exclude_seen:
                    items = [p for p in items if p not in seen][:k]
                shown[name].update(items)
                ranks[name].append(items.index(target) + 1 if target in items else 0)

    n_predictions = len(ranks[names[0]])
    share = (lambda x: x / n_predictions) if n_predictions else (lambda x: math.nan)
    methods = {}
    for name in names:
        m = rank_metrics(ranks[name], k)
        methods[name] = {
            "hit_rate": m["hit_rate"],
            "mrr": m["mrr"],
            "ndcg": m["ndcg"],
            "coverage": len(shown[name] & catalog_ids) / len(catalog_ids),
            "n_predictions": m["n_predictions"],
        }
    if split is None:
        split = {
            "train": {
                "sessions": int(train_events["session_id"].nunique()),
                "events": len(train_events),
            },
            "test": {
                "sessions": int(test_events["session_id"].nunique()),
                "events": len(test_events),
            },
        }
    return {
        "k": k,
        "split": dict(split),
        "replay": {
            "target": "the next different product viewed or carted in the session",
            "exclude_seen": bool(exclude_seen),
            "sessions": n_sessions,
            "predictions": n_predictions,
            "targets_seen_before": float(share(n_seen_before)),
            "targets_unknown_in_training": float(share(n_unknown)),
            "catalog_size": len(catalog_ids),
        },
        "methods": methods,
    }


def _checked(name: str, items: Any, k: int) -> list[str]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"ranker {name!r} must return a list of product ids, got {type(items).__name__}"
        )
    items = list(items)
    if len(items) > k:
        raise ValueError(f"ranker {name!r} returned {len(items)} products for k={k}")
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"ranker {name!r} returned a {type(item).__name__} product id; ids are str"
            )
    if len(set(items)) != len(items):
        raise ValueError(f"ranker {name!r} returned the same product twice")
    return items


def format_table(result: Mapping[str, Any]) -> str:
    """The methods of an :func:`evaluate` result as a Markdown table (best MRR first)."""
    k = result["k"]
    rows = sorted(result["methods"].items(), key=lambda kv: -kv[1]["mrr"])
    lines = [
        f"| method | HitRate@{k} | MRR@{k} | NDCG@{k} | coverage |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['hit_rate']:.4f} | {m['mrr']:.4f} | {m['ndcg']:.4f} | "
            f"{m['coverage']:.4f} |"
        )
    return "\n".join(lines)


def retrieval_table(result: Mapping[str, Any]) -> str:
    """The first stage's recall@N (``result["retrieval"]["by_size"]``) as a Markdown table."""
    lines = [
        "| candidates per source | mean candidates (N) | max | recall@N |",
        "|---:|---:|---:|---:|",
    ]
    for c in result["retrieval"]["by_size"]:
        lines.append(
            f"| {c['per_source']} | {c['mean_candidates']:.1f} | {c['max_candidates']} "
            f"| {c['recall']:.4f} |"
        )
    return "\n".join(lines)


# ---- baselines ----------------------------------------------------------------------------------


@dataclass
class TrainingIndex:
    """What the baselines learn from the training events, shared between them.

    Products are coded 0..n-1 in id order. ``popular`` lists the codes by
    popularity: the number of training sessions with an event of the product,
    ties by number of events, then by id. A product's category is its most
    frequent non-missing category in training (ties: smallest id), its price the
    median of its known training prices (NaN if none).
    """

    products: np.ndarray  # code -> id (object array of str)
    code: dict[str, int]
    popular: np.ndarray  # codes, most popular first
    pop_rank: np.ndarray  # code -> position in ``popular``
    category: np.ndarray  # code -> category id or None (object)
    price: np.ndarray  # code -> float64, NaN if unknown
    by_category: dict[str, np.ndarray]  # category -> codes, most popular first
    session_of: np.ndarray  # per training event (sorted by session, time): session code
    product_of: np.ndarray  # per training event: product code
    session_end: np.ndarray  # session code -> last event time

    @classmethod
    def fit(cls, train_events: pd.DataFrame) -> TrainingIndex:
        """Index the training events (canonical columns).

        Raises
        ------
        ValueError
            Missing columns or no events.
        """
        import pandas as pd

        _check_events(train_events, _REQUIRED, "train_events")
        if len(train_events) == 0:
            raise ValueError("train_events is empty")
        ev = train_events.sort_values(["session_id", "ts"], kind="stable")
        products, product_of = np.unique(
            ev["product_id"].to_numpy(dtype=object).astype(str), return_inverse=True
        )
        sessions, session_of = np.unique(
            ev["session_id"].to_numpy(dtype=object).astype(str), return_inverse=True
        )
        n_p, n_s = len(products), len(sessions)
        product_of = product_of.astype(np.int64)
        session_of = session_of.astype(np.int64)
        pairs = np.unique(session_of * n_p + product_of)
        n_sessions = np.bincount(pairs % n_p, minlength=n_p)
        n_events = np.bincount(product_of, minlength=n_p)
        popular = np.lexsort((np.arange(n_p), -n_events, -n_sessions))
        pop_rank = np.empty(n_p, dtype=np.int64)
        pop_rank[popular] = np.arange(n_p)

        category = np.full(n_p, None, dtype=object)
        by_category: dict[str, np.ndarray] = {}
        if "category" in ev:
            cats = pd.DataFrame({"p": product_of, "c": ev["category"].to_numpy(dtype=object)})
            cats = cats[~_isna(cats["c"].to_numpy())]
            if len(cats):
                cats["c"] = cats["c"].astype(str)
                counts = cats.groupby(["p", "c"]).size().reset_index(name="n")
                counts = counts.sort_values(
                    ["p", "n", "c"], ascending=[True, False, True], kind="stable"
                ).drop_duplicates("p")
                category[counts["p"].to_numpy()] = counts["c"].to_numpy(dtype=object)
            members: dict[str, list[int]] = {}
            for c in popular.tolist():
                if category[c] is not None:
                    members.setdefault(category[c], []).append(c)
            by_category = {c: np.asarray(v, dtype=np.int64) for c, v in members.items()}
        price = np.full(n_p, np.nan)
        if "price" in ev:
            prices = pd.DataFrame({"p": product_of, "x": ev["price"].to_numpy(dtype=np.float64)})
            med = prices.dropna().groupby("p")["x"].median()
            price[med.index.to_numpy()] = med.to_numpy()
        session_end = np.full(n_s, -np.inf)
        np.maximum.at(session_end, session_of, ev["ts"].to_numpy(dtype=np.float64))
        return cls(
            products=products.astype(object),
            code={p: i for i, p in enumerate(products.tolist())},
            popular=popular,
            pop_rank=pop_rank,
            category=category,
            price=price,
            by_category=by_category,
            session_of=session_of,
            product_of=product_of,
            session_end=session_end,
        )

    def fill(self, ranked: Iterable[int], k: int, exclude: Iterable[int] = ()) -> list[str]:
        """Ids of ``ranked`` codes, then of the most popular, skipping ``exclude`` and repeats, up to ``k``."""
        out: list[int] = []
        taken = set(exclude)
        for source in (ranked, self.popular):
            for c in source:
                c = int(c)
                if c in taken:
                    continue
                taken.add(c)
                out.append(c)
                if len(out) == k:
                    return self.products[out].tolist()
        return self.products[out].tolist() if out else []

    def current(self, session: Sequence[Event]) -> tuple[int | None, str | None, float]:
        """Code (None if unknown), category and price of the session's current product.

        The event's own category and price, else the product's training ones.
        """
        event = session[-1]
        code = self.code.get(event.product_id)
        category = event.category
        if category is None and code is not None:
            category = self.category[code]
        price = event.price
        if not (price == price) and code is not None:  # NaN
            price = float(self.price[code])
        return code, category, price

    def sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """Session and product codes of the training events with consecutive repeats of a product collapsed."""
        s, p = self.session_of, self.product_of
        keep = np.ones(len(p), dtype=bool)
        keep[1:] = (p[1:] != p[:-1]) | (s[1:] != s[:-1])
        return s[keep], p[keep]


class Popular:
    """The most popular training products (``TrainingIndex.popular``), minus the current one."""

    def __init__(self, index: TrainingIndex):
        self.index = index

    @classmethod
    def fit(cls, train_events: pd.DataFrame) -> Popular:
        return cls(TrainingIndex.fit(train_events))

    def __call__(self, session: Sequence[Event], k: int) -> list[str]:
        code, _, _ = self.index.current(session)
        return self.index.fill((), k, () if code is None else (code,))


class SameCategoryPopular(Popular):
    """The most popular products of the current product's category, then the most popular."""

    def __call__(self, session: Sequence[Event], k: int) -> list[str]:
        code, category, _ = self.index.current(session)
        ranked = self.index.by_category.get(category, ()) if category is not None else ()
        return self.index.fill(ranked, k, () if code is None else (code,))


class SameCategoryClosestPrice(Popular):
    """Products of the current category by closeness of their price to the current price.

    Products without a known price come after those with one (by popularity);
    without a current price the order is the category's popularity; then the most
    popular products fill the list.
    """

    def __call__(self, session: Sequence[Event], k: int) -> list[str]:
        code, category, price = self.index.current(session)
        members = self.index.by_category.get(category) if category is not None else None
        if members is None:
            ranked: np.ndarray | tuple[()] = ()
        elif not (price == price):
            ranked = members
        else:
            prices = self.index.price[members]
            distance = np.where(np.isnan(prices), np.inf, np.abs(prices - price))
            ranked = members[np.lexsort((self.index.pop_rank[members], distance))]
        return self.index.fill(ranked, k, () if code is None else (code,))


class CoVisitation(Popular):
    """Item-to-item co-visitation from the current product.

    Two products co-occur when they are at most ``window`` positions apart in a
    training session's sequence of products (consecutive repeats of a product
    collapsed first); counts are symmetric. Products are ranked by their count
    with the current product, ties by popularity; the most popular fill the list.
    """

    def __init__(self, index: TrainingIndex, window: int = 3):
        super().__init__(index)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        from scipy import sparse

        self.window = window
        s, p = index.sequences()
        rows, cols = [], []
        for d in range(1, window + 1):
            same = s[d:] == s[:-d]
            a, b = p[:-d][same], p[d:][same]
            differ = a != b
            rows += [a[differ], b[differ]]
            cols += [b[differ], a[differ]]
        n = len(index.products)
        r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        self.counts = sparse.csr_matrix((np.ones(len(r), dtype=np.float64), (r, c)), shape=(n, n))
        self.counts.sum_duplicates()
        self._cache: dict[int, np.ndarray] = {}

    @classmethod
    def fit(cls, train_events: pd.DataFrame, window: int = 3) -> CoVisitation:
        return cls(TrainingIndex.fit(train_events), window)

    def neighbours(self, code: int) -> np.ndarray:
        """Codes co-visited with ``code``, most often first (ties by popularity)."""
        hit = self._cache.get(code)
        if hit is None:
            lo, hi = self.counts.indptr[code], self.counts.indptr[code + 1]
            idx, cnt = self.counts.indices[lo:hi], self.counts.data[lo:hi]
            hit = idx[np.lexsort((self.index.pop_rank[idx], -cnt))]
            self._cache[code] = hit
        return hit

    def __call__(self, session: Sequence[Event], k: int) -> list[str]:
        code, _, _ = self.index.current(session)
        if code is None:
            return self.index.fill((), k)
        return self.index.fill(self.neighbours(code), k, (code,))


class SessionKNN(Popular):
    """Session-based kNN (SKNN; Jannach & Ludewig 2017, session-rec's ``ContextKNN``).

    The current session is the set of products seen so far. Candidate neighbours
    are the training sessions sharing at least one of them, of which the
    ``sample_size`` most recent (by last event) are kept; similarity is the
    cosine of the binary product sets, ``|S & N| / sqrt(|S| |N|)``; the
    ``neighbors`` most similar are kept (ties: more recent first); each product
    scores the summed similarity of the neighbours containing it. The current
    product is excluded; the most popular fill the list.
    """

    def __init__(self, index: TrainingIndex, neighbors: int = 100, sample_size: int = 500):
        super().__init__(index)
        for name, value in (("neighbors", neighbors), ("sample_size", sample_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from scipy import sparse

        self.neighbors, self.sample_size = neighbors, sample_size
        # sessions recoded by recency: a larger code is a session that ended later
        recency = np.lexsort((np.arange(len(index.session_end)), index.session_end))
        recode = np.empty_like(recency)
        recode[recency] = np.arange(len(recency))
        s = recode[index.session_of]
        pairs = np.unique(s * len(index.products) + index.product_of)
        s, p = pairs // len(index.products), pairs % len(index.products)
        shape = (len(recency), len(index.products))
        ones = np.ones(len(s), dtype=np.float64)
        self.items = sparse.csr_matrix((ones, (s, p)), shape=shape)  # session -> products
        self.holders = sparse.csc_matrix((ones, (s, p)), shape=shape)  # product -> sessions
        self.sizes = np.diff(self.items.indptr).astype(np.float64)

    @classmethod
    def fit(
        cls, train_events: pd.DataFrame, neighbors: int = 100, sample_size: int = 500
    ) -> SessionKNN:
        return cls(TrainingIndex.fit(train_events), neighbors, sample_size)

    def __call__(self, session: Sequence[Event], k: int) -> list[str]:
        code, _, _ = self.index.current(session)
        known = {c for e in session if (c := self.index.code.get(e.product_id)) is not None}
        if not known:
            return self.index.fill((), k)
        h = self.holders
        candidates = np.concatenate([h.indices[h.indptr[c] : h.indptr[c + 1]] for c in known])
        sessions, overlap = np.unique(candidates, return_counts=True)
        sessions, overlap = sessions[-self.sample_size :], overlap[-self.sample_size :]
        similarity = overlap / np.sqrt(len(known) * self.sizes[sessions])
        top = np.lexsort((-sessions, -similarity))[: self.neighbors]
        sessions, similarity = sessions[top], similarity[top]
        it = self.items
        starts, ends = it.indptr[sessions], it.indptr[sessions + 1]
        products = np.concatenate([it.indices[a:b] for a, b in zip(starts, ends, strict=True)])
        weights = np.repeat(similarity, ends - starts)
        scores = np.bincount(products, weights=weights, minlength=len(self.index.products))
        scored = np.flatnonzero(scores > 0)
        ranked = scored[np.lexsort((self.index.pop_rank[scored], -scores[scored]))]
        return self.index.fill(ranked, k, () if code is None else (code,))


def baselines(
    train_events: pd.DataFrame,
    *,
    covisitation_window: int = 3,
    knn_neighbors: int = 100,
    knn_sample_size: int = 500,
) -> dict[str, Ranker]:
    """The five baselines of :data:`BASELINES`, fitted on ``train_events`` only (one shared index)."""
    index = TrainingIndex.fit(train_events)
    return {
        "popular": Popular(index),
        "same_category_popular": SameCategoryPopular(index),
        "same_category_closest_price": SameCategoryClosestPrice(index),
        "covisitation": CoVisitation(index, covisitation_window),
        "session_knn": SessionKNN(index, knn_neighbors, knn_sample_size),
    }


def evaluate_baselines(
    events: pd.DataFrame,
    k: int = 10,
    *,
    test_fraction: float = 0.2,
    exclude_seen: bool = False,
    rankers: Mapping[str, Callable[[pd.DataFrame], Ranker]] | None = None,
) -> dict[str, Any]:
    """Split ``events`` by time, fit the baselines (and ``rankers``' factories) on the training side, replay.

    ``rankers`` maps extra method names to a function of the training events
    returning a fitted ranker. Coverage is over every product of ``events``.
    Returns :func:`evaluate`'s dict with the split record.
    """
    train, test, split = split_by_time(events, test_fraction)
    methods: dict[str, Ranker] = dict(baselines(train))
    for name, factory in (rankers or {}).items():
        methods[name] = factory(train)
    catalog = events["product_id"].astype(str).unique()
    return evaluate(
        train, test, methods, k, split=split, exclude_seen=exclude_seen, catalog=catalog
    )
