"""Features: the library's matrix equals the seed notebook's pandas code, exactly,
and the scalar (one session) path equals the vectorised path bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder

from reco_fast.features.page import (
    CANDIDATE_FEATURES,
    FEATURE_SETS,
    SEED_FEATURES,
    FeatureBuilder,
)
from reco_fast.features.schema import FLOAT32_MAX, LABEL
from tests.helpers import Built, nearest_float32

NOTEBOOK_SEED_FEATURES = [
    "category_enc",
    "current_price",
    "products_in_cart",
    "device_enc",
    "traffic_enc",
    "time_on_page_sec",
    "scroll_depth",
    "clicked_product_image",
    "session_length_mins",
    "products_viewed_count",
    "has_items_in_cart",
    "high_engagement",
    "premium_product",
    "low_price_product",
    "multi_product_session",
    "engagement_score",
    "engaged_shopper",
    "quick_browser",
    "session_intensity",
]
NOTEBOOK_CANDIDATE_FEATURES = [
    "rec_category_enc",
    "rec_price",
    "rec_same_category",
    "rec_price_ratio",
    "rec_already_viewed",
]


def notebook_features(
    log: pd.DataFrame, catalog: pd.DataFrame, fit_on: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The seed notebook's feature engineering in plain pandas, plus the candidate features.

    The LabelEncoders are fitted on ``fit_on`` (default: the log itself, as the notebook does).
    """
    df = log.copy()
    fit_on = log if fit_on is None else fit_on
    le_cat = LabelEncoder().fit(fit_on["current_category"])
    le_dev = LabelEncoder().fit(fit_on["device_type"])
    le_trf = LabelEncoder().fit(fit_on["traffic_source"])
    df["category_enc"] = le_cat.transform(df["current_category"])
    df["device_enc"] = le_dev.transform(df["device_type"])
    df["traffic_enc"] = le_trf.transform(df["traffic_source"])
    df["has_items_in_cart"] = (df["products_in_cart"] > 0).astype(int)
    df["high_engagement"] = ((df["time_on_page_sec"] >= 60) & (df["scroll_depth"] >= 0.6)).astype(
        int
    )
    df["premium_product"] = (df["current_price"] > 100).astype(int)
    df["low_price_product"] = (df["current_price"] < 30).astype(int)
    df["multi_product_session"] = (df["products_viewed_count"] >= 3).astype(int)
    df["engagement_score"] = np.clip(df["time_on_page_sec"] / 300 * df["scroll_depth"], 0, 1)
    df["engaged_shopper"] = (
        (df["session_length_mins"] >= 10) & (df["products_viewed_count"] >= 3)
    ).astype(int)
    df["quick_browser"] = ((df["time_on_page_sec"] < 30) & (df["scroll_depth"] < 0.3)).astype(int)
    df["session_intensity"] = df["products_viewed_count"] / (df["session_length_mins"] + 1)

    products = catalog.set_index("product_id")
    rec_category = df["recommended_product_id"].map(products["category"])
    df["rec_category_enc"] = le_cat.transform(rec_category)
    df["rec_price"] = df["recommended_product_id"].map(products["price"])
    df["rec_same_category"] = (rec_category == df["current_category"]).astype(int)
    df["rec_price_ratio"] = df["rec_price"] / np.maximum(df["current_price"], 0.01)
    viewed = df[["current_product_id", "prev_product_1", "prev_product_2", "prev_product_3"]]
    df["rec_already_viewed"] = viewed.eq(df["recommended_product_id"], axis=0).any(axis=1)
    df["rec_already_viewed"] = df["rec_already_viewed"].astype(int)
    return df


def assert_bitwise_equal(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    if a.tobytes() != b.tobytes():
        diff = np.argwhere(a.view(np.uint64) != b.view(np.uint64))
        raise AssertionError(f"{len(diff)} values differ, first at {diff[0].tolist()}")


def test_feature_names_are_the_notebooks() -> None:
    assert list(SEED_FEATURES) == NOTEBOOK_SEED_FEATURES
    assert list(CANDIDATE_FEATURES) == NOTEBOOK_CANDIDATE_FEATURES
    assert list(FEATURE_SETS["ranking"]) == NOTEBOOK_SEED_FEATURES + NOTEBOOK_CANDIDATE_FEATURES
    assert list(FEATURE_SETS["seed"]) == NOTEBOOK_SEED_FEATURES


def test_training_matrix_equals_notebook_on_whole_log(built: Built) -> None:
    expected = notebook_features(built.log, built.catalog)
    names = NOTEBOOK_SEED_FEATURES + NOTEBOOK_CANDIDATE_FEATURES
    assert built.X.shape == (15_000, 24)
    assert list(built.model.feature_names) == names
    for j, name in enumerate(names):
        col = expected[name].to_numpy(dtype=np.float64)
        assert np.array_equal(built.X[:, j], col), name
    assert_bitwise_equal(built.X, expected[names].to_numpy(dtype=np.float64))
    assert np.array_equal(built.y, built.log[LABEL].to_numpy())
    # the features are not degenerate: every binary flag takes both values
    for name in ("has_items_in_cart", "high_engagement", "premium_product", "low_price_product"):
        assert set(np.unique(expected[name])) == {0, 1}, name
    for name in ("rec_same_category", "rec_already_viewed", "quick_browser", "engaged_shopper"):
        assert set(np.unique(expected[name])) == {0, 1}, name


def test_serving_matrix_equals_training_matrix(built: Built) -> None:
    """model.features(DataFrame) (the serving path) rebuilds the matrix the model was trained on."""
    assert_bitwise_equal(built.model.features(built.log), built.X)


def test_vocabulary_is_label_encoders(built: Built) -> None:
    vocab = built.metadata["vocabulary"]
    for field in ("current_category", "device_type", "traffic_source"):
        assert vocab[field] == LabelEncoder().fit(built.log[field]).classes_.tolist()
    assert vocab["device_type"] == ["Desktop", "Mobile", "Tablet"]
    assert vocab["traffic_source"] == ["Direct", "Email", "Organic", "Paid", "Social"]


def test_seed_build_reproduces_notebook(seed_built: Built) -> None:
    """The 19-feature build is the notebook: same matrix, split, model and predictions."""
    df = notebook_features(seed_built.log, seed_built.catalog)
    X, y = df[NOTEBOOK_SEED_FEATURES], df[LABEL]
    assert_bitwise_equal(seed_built.X, X.to_numpy(dtype=np.float64))
    assert list(seed_built.model.feature_names) == NOTEBOOK_SEED_FEATURES
    assert seed_built.metadata["feature_set"] == "seed"

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=42, stratify=y
    )
    assert np.array_equal(seed_built.split.idx_test, X_test.index.to_numpy())
    notebook_model = GradientBoostingClassifier(
        n_estimators=100,
        max_depth=4,
        learning_rate=0.1,
        subsample=0.8,
        min_samples_split=50,
        min_samples_leaf=20,
        random_state=42,
    ).fit(X_train, y_train)
    expected = notebook_model.predict_proba(X_test)[:, 1]

    # the artifact, fed raw page views (seed feature set: no product fields needed)
    sessions = seed_built.log.loc[X_test.index].drop(
        columns=["recommended_product_id", "prev_product_1", LABEL]
    )
    got = seed_built.model.predict_proba(sessions)
    assert np.max(np.abs(got - expected)) <= 1e-12
    assert seed_built.result.report["metrics"]["auc"] == pytest.approx(
        roc_auc_score(y_test, expected), abs=1e-12
    )


def test_row_equals_transform_on_whole_log(built: Built) -> None:
    builder = built.model.builder
    records = built.log.to_dict("records")
    rows = np.array([builder.row(r) for r in records])
    columns = {c: built.log[c].to_numpy() for c in built.log.columns}
    assert_bitwise_equal(rows, builder.transform(columns))
    assert_bitwise_equal(rows, built.X)


def test_seed_builder_row_equals_transform(built: Built) -> None:
    seed = FeatureBuilder("seed", built.model.builder.vocabulary, built.model.builder.catalog)
    records = built.log.iloc[:2000].to_dict("records")
    rows = np.array([seed.row(r) for r in records])
    columns = {c: built.log[c].to_numpy()[:2000] for c in built.log.columns}
    assert rows.shape == (2000, 19)
    assert_bitwise_equal(rows, seed.transform(columns))
    assert_bitwise_equal(rows, built.X[:2000, :19])


def test_rec_price_ratio_uses_floor_for_free_products(built: Built, sample_session) -> None:
    builder = built.model.builder
    free = {**sample_session, "current_price": 0.0}
    row = builder.row(free)
    names = list(builder.feature_names)
    rec_price = row[names.index("rec_price")]
    assert rec_price > 0
    assert row[names.index("rec_price_ratio")] == rec_price / 0.01
    assert row[names.index("low_price_product")] == 1.0
    viewed = {**sample_session, "prev_product_2": sample_session["recommended_product_id"]}
    assert builder.row(viewed)[names.index("rec_already_viewed")] == 1.0


# ---- hypothesis: any valid session, scalar path == vectorised path --------------------------

# Boundary values of the seed's thresholds are tried on purpose.
PRICE = st.one_of(
    st.sampled_from([0.0, 0.005, 0.01, 29.99, 30.0, 100.0, 100.01]),
    st.floats(0.0, 1e4, allow_nan=False),
    st.floats(0.0, FLOAT32_MAX, allow_nan=False),
    st.integers(0, 10_000),
)
COUNT = st.one_of(
    st.integers(0, 20),
    st.integers(0, 10**30),
    st.integers(0, 20).map(float),
)
SECONDS = st.one_of(
    st.sampled_from([0, 29, 29.999, 30, 59.5, 60, 300, 301]),
    st.floats(0.0, 1e6, allow_nan=False),
    st.integers(0, 5000),
)
SCROLL = st.one_of(st.sampled_from([0.0, 0.29, 0.3, 0.59, 0.6, 1.0, 1]), st.floats(0.0, 1.0))
IMAGE = st.sampled_from([0, 1, 0.0, 1.0, True, False])
MINUTES = st.one_of(
    st.sampled_from([0, 9.99, 10, 10.0]),
    st.floats(0.0, 1e5, allow_nan=False),
    st.floats(0.0, FLOAT32_MAX, allow_nan=False),
)


@st.composite
def sessions(draw: st.DrawFn, builder: FeatureBuilder) -> dict[str, Any]:
    voc, catalog = builder.vocabulary, builder.catalog
    products = catalog.product_ids.tolist()
    product = st.sampled_from(products)
    session = {
        "current_category": draw(st.sampled_from(voc.categories)),
        "device_type": draw(st.sampled_from(voc.devices)),
        "traffic_source": draw(st.sampled_from(voc.traffic_sources)),
        "current_price": draw(PRICE),
        "products_in_cart": draw(COUNT),
        "time_on_page_sec": draw(SECONDS),
        "scroll_depth": draw(SCROLL),
        "clicked_product_image": draw(IMAGE),
        "session_length_mins": draw(MINUTES),
        "products_viewed_count": draw(COUNT),
        "current_product_id": draw(product),
        "prev_product_1": draw(st.one_of(st.just("NONE"), product)),
        "prev_product_2": draw(st.one_of(st.just("NONE"), product)),
        "prev_product_3": draw(st.one_of(st.just("NONE"), product)),
    }
    viewed = [
        p
        for p in (
            session["current_product_id"],
            session["prev_product_1"],
            session["prev_product_3"],
        )
        if p != "NONE"
    ]
    session["recommended_product_id"] = draw(st.one_of(product, st.sampled_from(viewed)))
    return session


def _columns(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [s[k] for s in batch] for k in batch[0]}


@pytest.fixture(scope="module")
def builders(built: Built) -> list[FeatureBuilder]:
    ranking = built.model.builder
    return [ranking, FeatureBuilder("seed", ranking.vocabulary, ranking.catalog)]


NUMERIC = [
    "current_price",
    "products_in_cart",
    "time_on_page_sec",
    "scroll_depth",
    "clicked_product_image",
    "session_length_mins",
    "products_viewed_count",
]


def _as_feature(v: Any) -> float:
    if isinstance(v, int) and not isinstance(v, bool) and float(v) != v:
        return nearest_float32(v)  # an int float64 cannot hold: its float32, rounded once
    return float(v)


@given(data=st.data())
def test_row_equals_transform_hypothesis(builders: list[FeatureBuilder], built: Built, data):
    ranking = builders[0]
    batch = data.draw(st.lists(sessions(ranking), min_size=1, max_size=8))
    for builder in builders:
        rows = np.array([builder.row(s) for s in batch], dtype=np.float64)
        assert rows.shape == (len(batch), builder.n_features)
        assert_bitwise_equal(rows, builder.transform(_columns(batch)))
        assert_bitwise_equal(rows, builder.transform(pd.DataFrame(batch)))
    # and the notebook's pandas code agrees on these (boundary-heavy) values, each number
    # taken as the features take it: an int float64 cannot hold as its float32 value,
    # rounded once
    frame = pd.DataFrame([{**s, **{c: _as_feature(s[c]) for c in NUMERIC}} for s in batch])
    expected = notebook_features(frame, built.catalog, fit_on=built.log)
    names = NOTEBOOK_SEED_FEATURES + NOTEBOOK_CANDIDATE_FEATURES
    ranking_rows = np.array([ranking.row(s) for s in batch], dtype=np.float64)
    assert_bitwise_equal(ranking_rows, expected[names].to_numpy(dtype=np.float64))


@given(data=st.data())
def test_single_equals_batch_prediction_hypothesis(built: Built, data) -> None:
    model = built.model
    batch = data.draw(st.lists(sessions(model.builder), min_size=1, max_size=6))
    singles = [model.predict_proba(s) for s in batch]
    assert all(type(p) is float and 0.0 <= p <= 1.0 for p in singles)
    assert np.array_equal(np.array(singles), model.predict_proba(batch))
    assert np.array_equal(np.array(singles), model.predict_proba(_columns(batch)))
    expected = built.estimator.predict_proba(model.features(batch))[:, 1]
    assert np.max(np.abs(np.array(singles) - expected)) <= 1e-12
