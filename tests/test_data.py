"""Data: the generator reproduces the seed's statistics, deterministically; CSV logs
are validated cell by cell; build_model.py trains on a user's own files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reco_fast
from reco_fast import InputError
from reco_fast.build import data as rdata
from reco_fast.build.generate import generate
from reco_fast.features.schema import LOG_COLUMNS
from tests.helpers import REPO, SMALL_ROWS, Built, subprocess_env

# ---- the generator -----------------------------------------------------------------------------

SEED_DEVICE_CTR = {"Desktop": 52.0, "Mobile": 38.7, "Tablet": 38.9}
SEED_TRAFFIC_CTR = {"Direct": 52.9, "Email": 49.0, "Organic": 41.6, "Paid": 42.8, "Social": 39.5}


@pytest.fixture(scope="module")
def generated() -> dict[int, tuple[pd.DataFrame, pd.DataFrame]]:
    return {seed: generate(seed=seed) for seed in (42, 7)}


@pytest.mark.parametrize("seed", [42, 7])
def test_generator_reproduces_seed_statistics(generated, seed: int) -> None:
    log, _ = generated[seed]
    assert list(log.columns) == list(LOG_COLUMNS)
    assert len(log) == 15_000
    assert log["session_id"].is_unique
    assert abs(log["customer_id"].nunique() - 2_983) <= 60
    y = log["recommendation_clicked"]
    assert set(y.unique()) == {0, 1}
    assert abs(100 * y.mean() - 43.8) <= 1.0
    by_device = log.groupby("device_type")["recommendation_clicked"].mean().mul(100)
    assert set(by_device.index) == set(SEED_DEVICE_CTR)
    for device, target in SEED_DEVICE_CTR.items():
        assert abs(by_device[device] - target) <= 1.0, (device, by_device[device])
    by_traffic = log.groupby("traffic_source")["recommendation_clicked"].mean().mul(100)
    assert set(by_traffic.index) == set(SEED_TRAFFIC_CTR)
    for source, target in SEED_TRAFFIC_CTR.items():
        assert abs(by_traffic[source] - target) <= 1.0, (source, by_traffic[source])


def test_generated_log_is_consistent_with_its_catalog(generated) -> None:
    log, catalog = generated[42]
    products = catalog.set_index("product_id")
    assert catalog["product_id"].is_unique
    assert (log["current_category"] == log["current_product_id"].map(products["category"])).all()
    assert (log["current_price"] == log["current_product_id"].map(products["price"])).all()
    assert log["recommended_product_id"].isin(catalog["product_id"]).all()
    for col in ("prev_product_1", "prev_product_2", "prev_product_3"):
        assert (log[col].isin(catalog["product_id"]) | (log[col] == "NONE")).all()
    assert log["scroll_depth"].between(0, 1).all()
    assert log["clicked_product_image"].isin([0, 1]).all()
    assert (log["current_price"] > 0).all()
    assert (log["session_length_mins"] >= 0).all()


def test_generator_is_deterministic(generated) -> None:
    log, catalog = generate(seed=42)
    pd.testing.assert_frame_equal(log, generated[42][0])
    pd.testing.assert_frame_equal(catalog, generated[42][1])
    other = generated[7][0]
    assert not log["recommendation_clicked"].equals(other["recommendation_clicked"])
    assert not log["time_on_page_sec"].equals(other["time_on_page_sec"])


def test_generate_default_writes_identical_bytes(tmp_path: Path, built: Built) -> None:
    a = rdata.generate_default(tmp_path / "a", seed=42)
    b = rdata.generate_default(tmp_path / "b", seed=42)
    assert [p.name for p in a] == [rdata.DEFAULT_LOG_FILE, rdata.DEFAULT_CATALOG_FILE]
    for pa, pb, pbuilt in zip(a, b, (built.log_path, built.catalog_path), strict=True):
        assert pa.read_bytes() == pb.read_bytes() == pbuilt.read_bytes()
    c = rdata.generate_default(tmp_path / "c", seed=43)
    assert c[0].read_bytes() != a[0].read_bytes()


def test_csv_round_trip_is_exact(built: Built, generated) -> None:
    """What the pipeline trains on (CSV through data.load) is exactly what was generated."""
    dataset = rdata.load(built.log_path, built.catalog_path)
    log, catalog = generated[42]
    assert len(dataset.log) == len(log)
    for col in LOG_COLUMNS:
        got, want = dataset.log[col].to_numpy(), log[col].to_numpy()
        if want.dtype.kind in "if":
            assert np.array_equal(got.astype(np.float64), want.astype(np.float64)), col
        else:
            assert got.astype(str).tolist() == want.astype(str).tolist(), col
    order = np.argsort(catalog["product_id"].to_numpy())
    assert dataset.catalog.product_ids.tolist() == catalog["product_id"].to_numpy()[order].tolist()
    assert np.array_equal(dataset.catalog.prices, catalog["price"].to_numpy()[order])


# ---- CSV validation ----------------------------------------------------------------------------

N_VALIDATION_ROWS = 200


@pytest.fixture(scope="module")
def text_log(built: Built) -> pd.DataFrame:
    """200 rows of the generated log as text, exactly as in the CSV."""
    return pd.read_csv(built.log_path, dtype=str, keep_default_na=False).iloc[:N_VALIDATION_ROWS]


@pytest.fixture(scope="module")
def text_catalog(built: Built) -> pd.DataFrame:
    return pd.read_csv(built.catalog_path, dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _load_error(log_path: Path, catalog_path: Path | None) -> InputError:
    with pytest.raises(InputError) as info:
        rdata.load(log_path, catalog_path)
    return info.value


def test_valid_subset_loads(text_log, built: Built, tmp_path: Path) -> None:
    dataset = rdata.load(_write(text_log, tmp_path / "log.csv"), built.catalog_path)
    assert len(dataset.log) == N_VALIDATION_ROWS
    assert dataset.log["products_in_cart"].dtype == np.float64
    assert dataset.log["recommendation_clicked"].dtype == np.int64
    assert len(dataset.catalog) == len(built.catalog)


# (id, column, {row: bad text}, field named, message fragment)
CELL_CASES = [
    ("non-numeric", "current_price", {7: "abc"}, "'current_price' must be a number, got 'abc'"),
    ("empty number", "time_on_page_sec", {12: ""}, "'time_on_page_sec' must be a number, got ''"),
    ("negative price", "current_price", {3: "-5"}, "'current_price' must be >= 0, got -5.0"),
    ("negative count", "products_viewed_count", {8: "-1"}, "must be >= 0, got -1.0"),
    ("scroll 1.5", "scroll_depth", {4: "1.5", 9: "1.5"}, "'scroll_depth' must be <= 1, got 1.5"),
    ("fractional cart", "products_in_cart", {6: "1.5"}, "must be an integer, got 1.5"),
    ("nan minutes", "session_length_mins", {5: "nan"}, "'session_length_mins' is NaN"),
    ("inf time", "time_on_page_sec", {1: "inf"}, "'time_on_page_sec' is infinite"),
    ("too large", "current_price", {2: "1e39"}, "'current_price' is too large for float32"),
    ("label 2", "recommendation_clicked", {11: "2"}, "must be 0 or 1, got 2.0"),
    ("label text", "recommendation_clicked", {13: "yes"}, "must be a number, got 'yes'"),
    ("empty device", "device_type", {2: ""}, "'device_type' is empty"),
    (
        "unknown product",
        "recommended_product_id",
        {5: "PROD9999"},
        "'PROD9999' is not in the catalog",
    ),
    ("unknown prev", "prev_product_2", {10: "PROD9998"}, "'PROD9998' is not in the catalog"),
    ("NONE current", "current_product_id", {14: "NONE"}, "'current_product_id' cannot be 'NONE'"),
]


@pytest.mark.parametrize(
    ("case", "column", "cells", "fragment"), CELL_CASES, ids=[c[0] for c in CELL_CASES]
)
def test_bad_cell_named_by_column_and_row(
    text_log, built: Built, tmp_path: Path, case, column, cells, fragment
) -> None:
    frame = text_log.copy()
    for row, text in cells.items():
        frame.loc[row, column] = text
    path = _write(frame, tmp_path / "log.csv")
    err = _load_error(path, built.catalog_path)
    rows = sorted(cells)
    message = str(err)
    assert message.startswith(f"{path}: ")
    assert fragment in message, message
    assert err.field == column
    assert err.rows == tuple(rows)
    where = f"row {rows[0]}" if len(rows) == 1 else "rows " + ", ".join(map(str, rows))
    assert message.endswith(f"({where})"), message
    assert "np." not in message, message


def test_missing_columns(text_log, built: Built, tmp_path: Path) -> None:
    path = _write(text_log.drop(columns=["scroll_depth"]), tmp_path / "one.csv")
    err = _load_error(path, built.catalog_path)
    assert str(err) == f"{path}: missing column 'scroll_depth'"
    assert err.field == "scroll_depth"
    path = _write(
        text_log.drop(columns=["device_type", "recommendation_clicked"]), tmp_path / "2.csv"
    )
    err = _load_error(path, built.catalog_path)
    assert str(err) == f"{path}: missing columns 'device_type', 'recommendation_clicked'"


def test_empty_header_only_and_missing_files(text_log, built: Built, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert str(_load_error(empty, built.catalog_path)) == f"{empty}: the file is empty"
    header = tmp_path / "header.csv"
    header.write_text(",".join(text_log.columns) + "\n")
    assert str(_load_error(header, built.catalog_path)) == (
        f"{header}: the file has a header but no rows"
    )
    missing = tmp_path / "nope.csv"
    assert str(_load_error(missing, built.catalog_path)) == f"{missing}: no such file"


def test_single_class_refused(text_log, built: Built, tmp_path: Path) -> None:
    frame = text_log.copy()
    frame["recommendation_clicked"] = "0"
    err = _load_error(_write(frame, tmp_path / "log.csv"), built.catalog_path)
    assert "'recommendation_clicked' has a single class" in str(err)
    assert err.field == "recommendation_clicked"


def test_catalog_category_unknown_to_the_log(text_log, text_catalog, tmp_path: Path) -> None:
    """A product whose category no page view has cannot be encoded: named by catalog row."""
    catalog = text_catalog.copy()
    catalog.loc[3, "category"] = "Toys"
    cat_path = _write(catalog, tmp_path / "products.csv")
    log_path = _write(text_log, tmp_path / "log.csv")
    err = _load_error(log_path, cat_path)
    message = str(err)
    assert message.startswith(f"{log_path}: {cat_path}: 'category' 'Toys'"), message
    assert message.endswith("(row 3)")
    assert err.field == "category" and err.rows == (3,)


@pytest.mark.parametrize(
    ("column", "row", "text", "fragment"),
    [
        ("price", 17, "x", "'price' must be a number, got 'x'"),
        ("price", 4, "-1", "'price' must be a finite, non-negative price"),
    ],
)
def test_bad_catalog_cell(text_log, text_catalog, tmp_path: Path, column, row, text, fragment):
    catalog = text_catalog.copy()
    catalog.loc[row, column] = text
    cat_path = _write(catalog, tmp_path / "products.csv")
    err = _load_error(_write(text_log, tmp_path / "log.csv"), cat_path)
    assert fragment in str(err) and str(cat_path) in str(err)
    assert str(err).endswith(f"(row {row})")
    assert err.field == column and err.rows == (row,)


def test_catalog_duplicate_and_missing_column(text_log, text_catalog, tmp_path: Path) -> None:
    log_path = _write(text_log, tmp_path / "log.csv")
    dup = pd.concat([text_catalog, text_catalog.iloc[[5]]])
    err = _load_error(log_path, _write(dup, tmp_path / "dup.csv"))
    assert f"duplicate product_id '{text_catalog.loc[5, 'product_id']}'" in str(err)
    no_price = _write(text_catalog.drop(columns="price"), tmp_path / "noprice.csv")
    err = _load_error(log_path, no_price)
    assert "missing column 'price'" in str(err) and err.field == "price"


def test_without_catalog_products_come_from_the_log(text_log, tmp_path: Path) -> None:
    frame = text_log.copy()
    seen = set(frame["current_product_id"])
    # the first product column (in schema order) naming a product no page view is about
    expected = next(
        (col, i)
        for col in ("prev_product_1", "prev_product_2", "prev_product_3", "recommended_product_id")
        for i, p in enumerate(frame[col])
        if p not in seen and p != "NONE"
    )
    err = _load_error(_write(frame, tmp_path / "log.csv"), None)
    assert (err.field, err.rows[0]) == expected
    assert "no --catalog given" in str(err)
    # a log whose products were all viewed loads and learns its catalog from them
    ok = frame.copy()
    ok["recommended_product_id"] = ok["current_product_id"].to_numpy()[::-1]
    ok[["prev_product_1", "prev_product_2", "prev_product_3"]] = "NONE"
    dataset = rdata.load(_write(ok, tmp_path / "ok.csv"), None)
    assert set(dataset.catalog.product_ids.tolist()) == set(ok["current_product_id"])


# ---- build_model.py ----------------------------------------------------------------------------


def _build_model(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_python(), str(REPO / "build_model.py"), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _python() -> str:
    import sys

    return sys.executable


def test_build_model_cli_on_own_csv(
    small_csv: Path, built: Built, seed_built: Built, tmp_path: Path, sample_session
) -> None:
    out = tmp_path / "model"
    proc = _build_model(
        [
            "--data",
            str(small_csv),
            "--catalog",
            str(built.catalog_path),
            "--out",
            str(out),
            "--features",
            "seed",
            "--calibration",
            "none",  # seed_built's: the estimator's own probabilities
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Real-time product recommendations: build report" in proc.stdout
    assert f"artifact: {out}" in proc.stdout
    assert "Traceback" not in proc.stderr
    # nothing written beside the artifact (no default data/ or artifacts/ in cwd)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["model"]

    model = reco_fast.load(out)
    assert model.feature_set == "seed"
    assert len(model.feature_names) == 19
    assert model.metadata["data"]["rows"] == SMALL_ROWS
    p = model.predict_proba(sample_session)
    assert isinstance(p, float) and 0.0 <= p <= 1.0
    # the same files and seed train the same model as the in-process build
    sessions = seed_built.log.iloc[:500]
    assert np.array_equal(model.predict_proba(sessions), seed_built.model.predict_proba(sessions))


def test_build_model_cli_bad_csv(text_log, built: Built, tmp_path: Path) -> None:
    frame = text_log.copy()
    frame.loc[4, "scroll_depth"] = "1.5"
    bad = _write(frame, tmp_path / "bad.csv")
    out = tmp_path / "model"
    proc = _build_model(
        [
            "--data",
            str(bad),
            "--catalog",
            str(built.catalog_path),
            "--out",
            str(out),
            "--features",
            "seed",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0] == proc.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("build_model.py: error: ")
    assert "'scroll_depth' must be <= 1, got 1.5 (row 4)" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_seed_model_on_the_default_data_reproduces_the_seed_results() -> None:
    """The seed's notebook on the generated data: high-confidence (>= 0.7) click rate about
    71% (the seed's 71.2%), engagement score the strongest feature, and time on page, price
    and scroll depth among the strongest (the seed's top five hold all four)."""
    from reco_fast.build.generate import generate
    from reco_fast.build.train import fit, split
    from reco_fast.features.page import FeatureBuilder, Vocabulary

    log, _ = generate(seed=42)
    vocabulary = Vocabulary.fit(log["current_category"], log["device_type"], log["traffic_source"])
    builder = FeatureBuilder("seed", vocabulary)
    X = builder.transform({c: log[c].to_numpy() for c in log.columns})
    y = log["recommendation_clicked"].to_numpy()
    parts = split(X, y)
    estimator, _ = fit(parts.X_train, parts.y_train)
    proba = estimator.predict_proba(parts.X_test)[:, 1]
    shown = proba >= 0.7
    assert shown.sum() >= 200
    ctr = parts.y_test[shown].mean()
    assert 0.69 <= ctr <= 0.74, ctr
    order = [builder.feature_names[i] for i in np.argsort(-estimator.feature_importances_)]
    assert order[0] == "engagement_score"
    assert {"time_on_page_sec", "current_price", "scroll_depth"} <= set(order[:7]), order[:7]
