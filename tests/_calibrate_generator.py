"""Print calibration statistics of ``reco_fast.build.generate.generate``.

Not a test: run it by hand (``python tests/_calibrate_generator.py``) after
touching the generator, and compare with the seed data set's numbers
(overall CTR 43.8 %, Desktop 52.0 / Mobile 38.7 / Tablet 38.9 %, Direct 52.9 /
Email 49.0 / Organic 41.6 / Paid 42.8 / Social 39.5 %, CTR@0.7 about 71 %).
The feature engineering and model replicate the seed pipeline exactly so the
numbers are comparable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reco_fast.build.generate import generate
from tests.test_features import (
    NOTEBOOK_CANDIDATE_FEATURES,
    NOTEBOOK_SEED_FEATURES,
    notebook_features,
)

# the seed notebook's features, as tests/test_features.py writes them (its reference)
FEATURE_COLS = NOTEBOOK_SEED_FEATURES
CANDIDATE_COLS = NOTEBOOK_CANDIDATE_FEATURES
engineer = notebook_features


def sanity(log: pd.DataFrame, catalog: pd.DataFrame) -> None:
    """Schema invariants the rest of the project relies on."""
    cat = catalog.set_index("product_id")
    assert (log["current_category"] == log["current_product_id"].map(cat["category"])).all()
    assert (log["current_price"] == log["current_product_id"].map(cat["price"])).all()
    prev = log[["prev_product_1", "prev_product_2", "prev_product_3"]]
    none = prev.eq("NONE")
    assert (~none.iloc[:, 0] | none.iloc[:, 1]).all() and (~none.iloc[:, 1] | none.iloc[:, 2]).all()
    assert (log["products_viewed_count"] >= (~none).sum(axis=1) + 1).all()
    assert log["scroll_depth"].between(0, 1).all()
    assert log["recommended_product_id"].isin(catalog["product_id"]).all()
    assert log["session_id"].is_unique


def fit_report(df: pd.DataFrame, cols: list[str], label: str, full: bool) -> None:
    X, y = df[cols], df["recommendation_clicked"]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    model = GradientBoostingClassifier(
        n_estimators=100,
        max_depth=4,
        learning_rate=0.1,
        subsample=0.8,
        min_samples_split=50,
        min_samples_leaf=20,
        random_state=42,
    )
    model.fit(X_tr, y_tr)
    p = model.predict_proba(X_te)[:, 1]
    print(f"\n== {label} ({len(cols)} features) ==")
    print(f"AUC {roc_auc_score(y_te, p):.4f}  accuracy {accuracy_score(y_te, p >= 0.5):.4f}")
    for thr in (0.5, 0.6, 0.7, 0.8, 0.9) if full else (0.7,):
        m = p >= thr
        ctr = y_te[m].mean() if m.any() else float("nan")
        print(f"  p>={thr:.1f}: n={m.sum():5d}  CTR={ctr:.3f}")
    if full:
        imp = pd.Series(model.feature_importances_, index=cols).sort_values(ascending=False)
        print("  top-10 importances:")
        for name, v in imp.head(10).items():
            print(f"    {name:24s} {v:.4f}")


def main() -> None:
    t0 = time.perf_counter()
    log, catalog = generate()
    dt = time.perf_counter() - t0
    sanity(log, catalog)
    y = log["recommendation_clicked"]
    print(f"generation time {dt:.3f}s")
    print(f"rows {len(log)}  unique customers {log['customer_id'].nunique()}")
    print(f"overall CTR {y.mean():.4f}")
    for col in ("device_type", "traffic_source", "current_category"):
        g = log.groupby(col)["recommendation_clicked"].agg(["mean", "size"])
        print(
            f"CTR by {col}: "
            + ", ".join(f"{k} {r['mean']:.3f} (n={r['size']:.0f})" for k, r in g.iterrows())
        )
    print(
        f"price range {catalog['price'].min():.2f}..{catalog['price'].max():.2f}  "
        f"<30: {(catalog['price'] < 30).mean():.2f}  >100: {(catalog['price'] > 100).mean():.2f}"
    )
    df = engineer(log, catalog)
    prev = log[["prev_product_1", "prev_product_2", "prev_product_3"]]
    prev_cat = prev.apply(lambda c: c.map(catalog.set_index("product_id")["category"]))
    print(
        f"device mix {log['device_type'].value_counts(normalize=True).round(3).to_dict()}\n"
        f"prev same-category share {prev_cat.eq(log['current_category'], axis=0).sum().sum() / prev.ne('NONE').sum().sum():.3f}  "
        f"rec same-category {df['rec_same_category'].mean():.3f}  "
        f"rec already viewed {df['rec_already_viewed'].mean():.3f}"
    )
    fit_report(df, FEATURE_COLS, "seed model", full=True)
    fit_report(df, FEATURE_COLS + CANDIDATE_COLS, "ranking set", full=True)


if __name__ == "__main__":
    main()
