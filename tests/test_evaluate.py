"""Offline evaluation by replay: the split keeps sessions whole and training in the past,
the metrics are exact on hand-checkable cases, the baselines follow their definitions,
and the REES46 replay runs in seconds."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from reco_fast.build.evaluate import (
    BASELINES,
    CoVisitation,
    Popular,
    SameCategoryClosestPrice,
    SameCategoryPopular,
    SessionKNN,
    TrainingIndex,
    baselines,
    evaluate,
    evaluate_baselines,
    format_table,
    rank_metrics,
    split_by_time,
)
from reco_fast.build.events import read_events
from tests.helpers import REES46, REES46_COLUMNS, require


def _events(rows, category=None, price=None) -> pd.DataFrame:
    """Canonical events from (session, ts, type, product) rows; category/price from maps."""
    frame = pd.DataFrame(rows, columns=["session_id", "ts", "type", "product_id"])
    frame["ts"] = frame["ts"].astype(float)
    if category is not None:
        frame["category"] = frame["product_id"].map(category).astype(object)
    if price is not None:
        frame["price"] = frame["product_id"].map(price).astype(float)
    return frame


def _views(sessions: dict[str, str], t0: float = 0.0) -> pd.DataFrame:
    """One view per letter, sessions one after another in dict order."""
    rows, t = [], t0
    for sid, products in sessions.items():
        for p in products:
            rows.append((sid, t, "view", p))
            t += 1
    return _events(rows)


def _expected_ndcg(ranks: list[int], k: int) -> float:
    """NDCG@k of one relevant item per list, by scikit-learn from explicit score rows."""
    n_items = 2 * k + 2
    y_true = np.zeros((len(ranks), n_items))
    y_score = np.zeros((len(ranks), n_items))
    for row, r in enumerate(ranks):
        y_true[row, 0] = 1.0  # item 0 is the target
        y_score[row] = np.arange(n_items, 0, -1.0)  # item j would be at rank j + 1
        position = r - 1 if r >= 1 else n_items - 1  # absent: last
        y_score[row, [0, position]] = y_score[row, [position, 0]]
    return float(ndcg_score(y_true, y_score, k=k))


# ---- metrics ------------------------------------------------------------------------------------


def test_rank_metrics_match_an_independent_computation() -> None:
    ranks, k = [1, 3, 0, 10, 11, 2], 10
    got = rank_metrics(ranks, k)
    hits = [r for r in ranks if 1 <= r <= k]
    assert got["n_predictions"] == 6
    assert got["hit_rate"] == pytest.approx(len(hits) / 6, abs=1e-15)
    assert got["mrr"] == pytest.approx(sum(1 / r for r in hits) / 6, abs=1e-15)
    assert got["ndcg"] == pytest.approx(_expected_ndcg(ranks, k), abs=1e-12)
    assert math.isnan(rank_metrics([], k)["mrr"])


# ---- replay -------------------------------------------------------------------------------------

TRAIN = _views({"r1": "AB", "r2": "ABG"}, t0=0)
# targets: A->B, A->B, B->C, C(cart)->F, D(purchase)->F, E(remove)->F, F: none; t2: none
TEST = _events(
    [
        ("t1", 100, "view", "A"),
        ("t1", 101, "view", "A"),
        ("t1", 102, "view", "B"),
        ("t1", 103, "cart", "C"),
        ("t1", 104, "purchase", "D"),
        ("t1", 105, "remove", "E"),
        ("t1", 106, "view", "F"),
        ("t2", 107, "view", "G"),
    ]
)
TARGETS = ["B", "B", "C", "F", "F", "F"]


class Fixed:
    """Always the same list; records what it was asked."""

    def __init__(self, items: list[str]):
        self.items, self.calls = items, []

    def __call__(self, session, k):
        self.calls.append(([e.product_id for e in session], k))
        return self.items[:k]


def test_replay_scores_a_ranker_whose_ranks_are_known() -> None:
    # D (purchased) and E (removed) are never targets: listing D must not score
    ranker = Fixed(["B", "D", "C", "X"])
    result = evaluate(TRAIN, TEST, {"fixed": ranker, "late": Fixed(["E", "F", "X"])}, k=3)
    late = result["methods"]["late"]  # E (removed) never a target; F at rank 2 three times
    assert (late["hit_rate"], late["mrr"]) == (pytest.approx(3 / 6), pytest.approx(3 / 2 / 6))
    ranks = [["B", "D", "C"].index(t) + 1 if t in ("B", "D", "C") else 0 for t in TARGETS]
    assert ranks == [1, 1, 3, 0, 0, 0]
    m = result["methods"]["fixed"]
    assert m["n_predictions"] == 6
    assert m["hit_rate"] == pytest.approx(3 / 6, abs=1e-15)
    assert m["mrr"] == pytest.approx((1 + 1 + 1 / 3) / 6, abs=1e-15)
    assert m["ndcg"] == pytest.approx(_expected_ndcg(ranks, 3), abs=1e-12)
    assert m["coverage"] == pytest.approx(3 / 7, abs=1e-15)  # {B, C, D} of A..G
    # asked at every event with a target, with the session so far (this event included)
    assert ranker.calls == [(list("AABCDE"[: i + 1]), 3) for i in range(6)]
    assert result["k"] == 3
    assert result["replay"]["predictions"] == 6 and result["replay"]["sessions"] == 1
    assert result["replay"]["catalog_size"] == 7
    assert result["replay"]["targets_unknown_in_training"] == pytest.approx(4 / 6)
    assert result["split"] == {
        "train": {"sessions": 2, "events": 5},
        "test": {"sessions": 2, "events": 8},
    }


def test_seen_products_are_targets_and_can_be_excluded_for_every_method() -> None:
    test = _events([("t", 0, "view", p) for p in "ABAC"])  # targets B, A (seen), C
    plain = evaluate(TRAIN, test, {"f": Fixed(["A", "B", "C"])}, k=3)
    assert plain["methods"]["f"]["hit_rate"] == 1.0
    assert plain["replay"]["targets_seen_before"] == pytest.approx(1 / 3)
    ranker = Fixed(["A", "B", "C", "D", "E"])
    excluded = evaluate(TRAIN, test, {"f": ranker}, k=1, exclude_seen=True)
    # lists after removing seen products: [B], [C], [C]: hit, miss (A was seen), hit
    assert [k for _, k in ranker.calls] == [2, 3, 3]  # k + number of products seen
    assert excluded["methods"]["f"]["hit_rate"] == pytest.approx(2 / 3)
    assert excluded["methods"]["f"]["mrr"] == pytest.approx(2 / 3)
    assert excluded["replay"]["exclude_seen"] is True


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        ([1, 2], TypeError, "ranker 'bad' returned a int"),
        (["A", "A"], ValueError, "ranker 'bad' returned the same product twice"),
        (["A", "B", "C", "D"], ValueError, "ranker 'bad' returned 4 products for k=3"),
        ("AB", TypeError, "ranker 'bad' must return a list"),
    ],
)
def test_ranker_contract_is_checked(returned, error, match) -> None:
    with pytest.raises(error, match=match):
        evaluate(TRAIN, TEST, {"bad": lambda session, k: returned}, k=3)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be"):
        evaluate(TRAIN, TEST, {"f": Fixed([])}, k=0)
    with pytest.raises(ValueError, match="rankers"):
        evaluate(TRAIN, TEST, {}, k=3)
    with pytest.raises(ValueError, match="missing column 'type'"):
        evaluate(TRAIN.drop(columns="type"), TEST, {"f": Fixed([])})
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_time(TEST, 1.0)


# ---- split --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("straddling", ["truncate", "drop", "train"])
def test_split_keeps_sessions_whole_and_training_in_the_past(seed, straddling) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(200):
        start = rng.uniform(0, 10_000)
        for t in np.sort(start + rng.exponential(300, size=rng.integers(1, 8))):
            rows.append((f"s{s:03d}", t, "view", f"p{rng.integers(50)}"))
    events = _events(rows)
    train, test, split = split_by_time(events, 0.2, straddling=straddling)
    cut = split["cut_time"]
    starts = events.groupby("session_id")["ts"].min()
    ends = events.groupby("session_id")["ts"].max()
    held = set(starts.index[starts >= cut])
    assert len(held) == 40  # 20% of 200 (continuous times: no ties)
    assert set(test["session_id"]) == held
    assert len(test) == events["session_id"].isin(held).sum()  # held-out sessions whole
    assert not set(train["session_id"]) & held
    straddle = set(starts.index[(starts < cut) & (ends >= cut)])
    assert split["straddling_sessions"] == len(straddle) > 0
    if straddling == "truncate":
        assert train["ts"].max() < cut
        expected = events[
            (starts.loc[events["session_id"]].to_numpy() < cut) & (events["ts"] < cut)
        ]
        assert len(train) == len(expected)
        assert split["dropped_events"] == int(
            (events["session_id"].isin(straddle) & (events["ts"] >= cut)).sum()
        )
    elif straddling == "drop":
        assert train["ts"].max() < cut
        assert not set(train["session_id"]) & straddle
    else:
        assert straddle <= set(train["session_id"])
        assert split["dropped_events"] == 0
    assert split["train"] == {"sessions": train["session_id"].nunique(), "events": len(train)}
    assert split["test"] == {"sessions": 40, "events": len(test)}
    assert list(train.columns) == list(events.columns)


def test_split_holds_out_sessions_tied_with_the_cut() -> None:
    events = _views({"a": "A", "b": "B", "c": "C"})
    events.loc[events["session_id"] == "c", "ts"] = events.loc[
        events["session_id"] == "b", "ts"
    ].iloc[0]
    train, test, _ = split_by_time(events, 0.34)  # one session, but "b" starts with "c"
    assert set(test["session_id"]) == {"b", "c"} and set(train["session_id"]) == {"a"}


# ---- baselines ----------------------------------------------------------------------------------

CATEGORY = {"A": "x", "B": "x", "C": "x", "D": "y", "E": "x"}
PRICE = {"A": 10.0, "B": 20.0, "C": 12.0, "D": 100.0, "E": 30.0}
# sessions (popularity = sessions with the product): B 3, A 2, C 1, D 1, E 1 -> B A C D E
TOY = _events(
    [
        ("s1", 0, "view", "A"),
        ("s1", 1, "view", "B"),
        ("s1", 2, "view", "C"),
        ("s2", 3, "view", "A"),
        ("s2", 4, "view", "B"),
        ("s3", 5, "view", "B"),
        ("s3", 6, "cart", "D"),
        ("s4", 7, "view", "E"),
    ],
    CATEGORY,
    PRICE,
)


def _session(*products, price=math.nan, category=None):
    """A session so far whose last event has the given price/category (others as the toy)."""
    from reco_fast.build.evaluate import Event

    events = [
        Event(float(i), "view", p, CATEGORY.get(p), PRICE.get(p, math.nan))
        for i, p in enumerate(products)
    ]
    last = events[-1]
    events[-1] = last._replace(price=price, category=category)
    return tuple(events)


def test_popularity_order_and_fill() -> None:
    index = TrainingIndex.fit(TOY)
    assert index.products[index.popular].tolist() == ["B", "A", "C", "D", "E"]
    popular = Popular(index)
    assert popular(_session("A"), 3) == ["B", "C", "D"]
    assert popular(_session("new"), 9) == [
        "B",
        "A",
        "C",
        "D",
        "E",
    ]  # unknown product: nothing excluded


def test_same_category_popular() -> None:
    ranker = SameCategoryPopular.fit(TOY)
    assert ranker(_session("A"), 5) == ["B", "C", "E", "D"]  # x by popularity, then D from popular
    assert ranker(_session("D"), 3) == ["B", "A", "C"]  # y has only D: popular fills
    assert ranker(_session("new", category="y"), 2) == ["D", "B"]  # the event's own category
    assert ranker(_session("new"), 2) == ["B", "A"]  # no category at all: popular


def test_same_category_closest_price() -> None:
    ranker = SameCategoryClosestPrice.fit(TOY)
    # the product's training price 10: C (2), B (10), E (20), then D from popular
    assert ranker(_session("A"), 5) == ["C", "B", "E", "D"]
    # the event's own price wins: 26 -> E (4), B (6), C (14)
    assert ranker(_session("A", price=26.0), 3) == ["E", "B", "C"]
    # a product unknown in training with a category and no price: category popularity
    assert ranker(_session("new", category="x"), 4) == ["B", "A", "C", "E"]


def test_covisitation_counts_within_the_window() -> None:
    one = CoVisitation.fit(TOY, window=1)
    # consecutive pairs: A-B (s1, s2), B-C, B-D
    assert one(_session("B"), 4) == ["A", "C", "D", "E"]  # A 2, C 1 and D 1 by popularity, E fills
    assert one(_session("A"), 2) == ["B", "C"]
    two = CoVisitation.fit(TOY, window=2)
    assert two(_session("C"), 2) == ["B", "A"]  # A-C are two apart in s1
    repeats = _events(
        [("s", 0, "view", "A"), ("s", 1, "view", "A"), ("s", 2, "view", "A"), ("s", 3, "view", "C")]
    )
    both = pd.concat([TOY, repeats], ignore_index=True)
    # consecutive repeats collapse: A A A C counts A-C once, as A C (not 3 times); plus s1's A-C
    code = TrainingIndex.fit(both).code
    assert CoVisitation.fit(both, window=3).counts[code["A"], code["C"]] == 2


def test_session_knn_on_a_hand_computed_case() -> None:
    train = _views({"s1": "AB", "s2": "AC", "s3": "BCD"})
    # current {A}: neighbours s1 and s2 at cosine 1/sqrt(2); B and C score 0.707 each
    assert SessionKNN.fit(train)(_session("A"), 3) == ["B", "C", "D"]
    # one neighbour: equal similarity, the more recent session (s2) wins
    assert SessionKNN.fit(train, neighbors=1)(_session("A"), 3) == ["C", "B", "D"]
    # a sample of one recent session: only s2 is considered
    assert SessionKNN.fit(train, sample_size=1)(_session("A"), 1) == ["C"]
    # current {A, B}: s1 = 2/sqrt(2*2) = 1, s2 = 1/2, s3 = 1/sqrt(2*3); C: 0.5 + 0.408, D: 0.408
    assert SessionKNN.fit(train)(_session("A", "B"), 2) == ["A", "C"]


def _reference_knn(train: pd.DataFrame, session: list[str], k: int, neighbors: int, sample: int):
    """SKNN written out from its definition, loop by loop."""
    sessions = {sid: set(g["product_id"]) for sid, g in train.groupby("session_id")}
    end = train.groupby("session_id")["ts"].max().to_dict()
    n_sessions = {p: sum(p in s for s in sessions.values()) for p in set(train["product_id"])}
    n_events = train["product_id"].value_counts().to_dict()
    popular = sorted(n_sessions, key=lambda p: (-n_sessions[p], -n_events[p], p))
    current = set(session) & set(n_sessions)
    recent = sorted(
        (sid for sid, s in sessions.items() if s & current), key=lambda sid: (end[sid], sid)
    )
    recent = recent[-sample:]
    sims = {
        sid: len(sessions[sid] & current) / math.sqrt(len(current) * len(sessions[sid]))
        for sid in recent
    }
    rank_of = {sid: i for i, sid in enumerate(recent)}
    top = sorted(sims, key=lambda sid: (-sims[sid], -rank_of[sid]))[:neighbors]
    scores: dict[str, float] = {}
    for sid in top:
        for p in sessions[sid]:
            scores[p] = scores.get(p, 0.0) + sims[sid]
    order = sorted(scores, key=lambda p: (-scores[p], popular.index(p)))
    out = []
    for p in order + popular:
        if p != session[-1] and p not in out:
            out.append(p)
    return out[:k]


@pytest.mark.parametrize("seed", range(6))
def test_session_knn_matches_its_definition(seed) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(120):
        for j in range(int(rng.integers(1, 6))):
            rows.append((f"s{s:03d}", s * 10.0 + j, "view", f"p{int(rng.zipf(1.5)) % 40:02d}"))
    train = _events(rows)
    neighbors, sample = int(rng.integers(1, 20)), int(rng.integers(5, 60))
    ranker = SessionKNN.fit(train, neighbors=neighbors, sample_size=sample)
    for _ in range(20):
        session = [f"p{int(v):02d}" for v in rng.integers(0, 45, size=rng.integers(1, 5))]
        assert ranker(_session(*session), 10) == _reference_knn(
            train, session, 10, neighbors, sample
        )


def test_baselines_are_fitted_on_training_events_only() -> None:
    # a product that only the held-out side has is never recommended by any baseline
    result = evaluate(TOY, _views({"t": "ABZ"}, t0=100), baselines(TOY), k=10)
    assert set(result["methods"]) == set(BASELINES)
    for name, ranker in baselines(TOY).items():
        assert "Z" not in ranker(_session("A", "B"), 10), name


# ---- REES46 -------------------------------------------------------------------------------------


def test_rees46_baselines_replay(capsys) -> None:
    if not REES46.is_file():
        require("the REES46 sample", str(REES46))
    events = read_events(REES46, REES46_COLUMNS)
    start = time.perf_counter()
    result = evaluate_baselines(events, k=10)
    seconds = time.perf_counter() - start
    split, replay = result["split"], result["replay"]
    assert split["train"]["sessions"] + split["test"]["sessions"] == 5_066
    assert split["test"]["sessions"] == round(0.2 * 5_066)
    assert split["train_last_time"] < split["cut_time"] <= split["test_first_time"]
    assert split["train"]["events"] + split["test"]["events"] + split["dropped_events"] == 17_433
    assert replay["catalog_size"] == 6_492
    assert replay["predictions"] > 1_000
    for name in BASELINES:
        m = result["methods"][name]
        assert m["n_predictions"] == replay["predictions"]
        for metric in ("hit_rate", "mrr", "ndcg", "coverage"):
            assert 0.0 <= m[metric] <= 1.0, (name, metric)
        assert m["mrr"] <= m["ndcg"] <= m["hit_rate"]
    # every method that looks at the session beats "most popular"
    for name in BASELINES[1:]:
        assert result["methods"][name]["hit_rate"] > result["methods"]["popular"]["hit_rate"]
    assert seconds < 30, seconds  # about 0.3 s here
    with capsys.disabled():
        print(
            f"\nREES46, {replay['predictions']} predictions, {seconds:.2f} s\n{format_table(result)}"
        )
