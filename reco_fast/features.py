"""One definition of the model's features, shared by training and serving.

The seed notebook's 19 features, plus five that describe the recommended
product against the session, computed two ways that must agree bit for bit:
vectorised over columns (training, batches, candidate matrices) and a lean
scalar path for a single page view, where numpy's per-call overhead would cost
more than the trees themselves. Only numpy is imported: this is serving code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError
from .schema import (
    CATEGORICAL_FIELDS,
    FLOAT32_MAX,
    NONE_PRODUCT,
    NUMERIC_FIELDS,
    as_float_array,
    as_str_array,
    describe_numeric_problem,
    raise_rows,
    validate_numeric,
)

__all__ = [
    "CANDIDATE_FEATURES",
    "FEATURE_SETS",
    "SEED_FEATURES",
    "Catalog",
    "FeatureBuilder",
    "Vocabulary",
]

SEED_FEATURES: tuple[str, ...] = (
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
)
CANDIDATE_FEATURES: tuple[str, ...] = (
    "rec_category_enc",
    "rec_price",
    "rec_same_category",
    "rec_price_ratio",
    "rec_already_viewed",
)
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "ranking": SEED_FEATURES + CANDIDATE_FEATURES,
    "seed": SEED_FEATURES,
}
MIN_PRICE_FOR_RATIO = 0.01
"""rec_price_ratio divides by max(current_price, 0.01) so a free product cannot divide by 0."""

SESSION_NUMERIC = (
    "current_price",
    "products_in_cart",
    "time_on_page_sec",
    "scroll_depth",
    "clicked_product_image",
    "session_length_mins",
    "products_viewed_count",
)
VIEWED_FIELDS = ("current_product_id", "prev_product_1", "prev_product_2", "prev_product_3")
_CODE_FIELD = {"current_category": 0, "device_type": 1, "traffic_source": 2}


@dataclass(frozen=True)
class Vocabulary:
    """Label vocabularies, sorted as scikit-learn's LabelEncoder sorts them.

    Learned from the training data and stored in the artifact: a shop's own
    category names work without code changes.
    """

    categories: tuple[str, ...]
    devices: tuple[str, ...]
    traffic_sources: tuple[str, ...]
    _index: tuple[dict[str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("categories", "devices", "traffic_sources"):
            values = tuple(getattr(self, name))
            if list(values) != sorted(set(values)) or not values:
                raise ValueError(f"vocabulary {name!r} must be non-empty, sorted and unique")
            object.__setattr__(self, name, values)
        index = tuple(
            {v: i for i, v in enumerate(vs)}
            for vs in (self.categories, self.devices, self.traffic_sources)
        )
        object.__setattr__(self, "_index", index)

    @classmethod
    def fit(
        cls,
        current_category: Iterable[str],
        device_type: Iterable[str],
        traffic_source: Iterable[str],
    ) -> Vocabulary:
        return cls(
            tuple(sorted(set(current_category))),
            tuple(sorted(set(device_type))),
            tuple(sorted(set(traffic_source))),
        )

    def to_json(self) -> dict[str, list[str]]:
        return {
            "current_category": list(self.categories),
            "device_type": list(self.devices),
            "traffic_source": list(self.traffic_sources),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[str]]) -> Vocabulary:
        return cls(
            tuple(data["current_category"]),
            tuple(data["device_type"]),
            tuple(data["traffic_source"]),
        )

    def values(self, field_name: str) -> tuple[str, ...]:
        return (self.categories, self.devices, self.traffic_sources)[_CODE_FIELD[field_name]]

    def code(self, field_name: str, value: Any) -> int:
        """Scalar lookup; the error lists what the model knows."""
        try:
            return self._index[_CODE_FIELD[field_name]][value]
        except (KeyError, TypeError):
            raise InputError(
                f"{field_name!r} has unknown value {value!r}; the model knows "
                f"{list(self.values(field_name))}",
                field=field_name,
            ) from None

    def codes(self, field_name: str, values: np.ndarray, offset: int = 0) -> np.ndarray:
        """Vectorised lookup: the code is the position in the sorted vocabulary."""
        vocab = np.asarray(self.values(field_name))
        pos = np.searchsorted(vocab, values).clip(0, len(vocab) - 1)
        bad = np.flatnonzero(vocab[pos] != values)
        if bad.size:
            raise_rows(
                field_name,
                bad,
                f"has unknown value {str(values[bad[0]])!r}; the model knows {vocab.tolist()}",
                offset,
            )
        return pos


@dataclass(frozen=True)
class Catalog:
    """The products a model can recommend: ids sorted, with category and price.

    Kept as parallel numpy arrays so a whole catalog becomes a candidate matrix
    by broadcasting, and as a dict for the single-session path.
    """

    product_ids: np.ndarray
    categories: np.ndarray
    prices: np.ndarray
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = as_str_array("product_id", self.product_ids)
        cats = as_str_array("category", self.categories, len(ids))
        prices = as_float_array("price", self.prices, len(ids))
        if len(ids) == 0:
            raise InputError("the catalog is empty", field="product_id")
        bad = np.flatnonzero(~np.isfinite(prices) | (prices < 0) | (prices > FLOAT32_MAX))
        if bad.size:
            raise_rows("price", bad, "must be a finite, non-negative price")
        order = np.argsort(ids, kind="stable")
        ids, cats, prices = ids[order], cats[order], prices[order]
        dup = np.flatnonzero(ids[1:] == ids[:-1])
        if dup.size:
            raise InputError(
                f"catalog has duplicate product_id {ids[dup[0]]!r}", field="product_id"
            )
        if np.any(ids == NONE_PRODUCT):
            raise InputError(
                f"{NONE_PRODUCT!r} is reserved and cannot be a product_id", field="product_id"
            )
        for name, value in (("product_ids", ids), ("categories", cats), ("prices", prices)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_index", {p: i for i, p in enumerate(ids.tolist())})

    def __len__(self) -> int:
        return len(self.product_ids)

    @classmethod
    def from_records(cls, records: Any) -> Catalog:
        """From a list of dicts, a dict of columns or a DataFrame (product_id, category, price)."""
        if hasattr(records, "columns") and hasattr(records, "iloc"):
            records = {c: records[c].to_numpy() for c in records.columns}
        if isinstance(records, Mapping):
            missing = [c for c in ("product_id", "category", "price") if c not in records]
            if missing:
                raise InputError(f"catalog is missing column {missing[0]!r}", field=missing[0])
            return cls(records["product_id"], records["category"], records["price"])
        if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
            raise TypeError("a catalog must be a list of dicts, a dict of columns or a DataFrame")
        cols: dict[str, list[Any]] = {"product_id": [], "category": [], "price": []}
        for i, r in enumerate(records):
            for c, col in cols.items():
                try:
                    col.append(r[c])
                except (KeyError, TypeError):
                    raise InputError(f"catalog row {i} has no {c!r}", field=c, rows=[i]) from None
        return cls(
            np.asarray(cols["product_id"], dtype=object),
            np.asarray(cols["category"], dtype=object),
            np.asarray(cols["price"], dtype=object),
        )

    def index(self, product_id: Any, field_name: str = "recommended_product_id") -> int:
        try:
            return self._index[product_id]
        except (KeyError, TypeError):
            raise InputError(
                f"{field_name!r} {product_id!r} is not in the catalog ({len(self)} products)",
                field=field_name,
            ) from None

    def indices(
        self, ids: np.ndarray, field_name: str = "recommended_product_id", offset: int = 0
    ) -> np.ndarray:
        pos = np.searchsorted(self.product_ids, ids).clip(0, len(self) - 1)
        bad = np.flatnonzero(self.product_ids[pos] != ids)
        if bad.size:
            raise_rows(
                field_name,
                bad,
                f"{str(ids[bad[0]])!r} is not in the catalog ({len(self)} products)",
                offset,
            )
        return pos

    def to_rows(self) -> list[tuple[str, str, float]]:
        return list(
            zip(
                self.product_ids.tolist(),
                self.categories.tolist(),
                self.prices.tolist(),
                strict=True,
            )
        )


def _scalar(session: Mapping[str, Any], name: str) -> Any:
    try:
        return session[name]
    except KeyError:
        raise InputError(f"missing field {name!r}", field=name) from None


def _number(session: Mapping[str, Any], name: str) -> float:
    v = _scalar(session, name)
    if type(v) is not float:
        if isinstance(v, str) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise InputError(
                f"{name!r} must be a number, got {type(v).__name__} {v!r:.40}", field=name
            )
        try:
            v = float(v)
        except OverflowError:
            raise InputError(f"{name!r} is too large for float32", field=name) from None
    f = NUMERIC_FIELDS[name]
    if not (f.low <= v <= f.high) or (f.integer and v != int(v)):
        raise InputError(f"{name!r} {describe_numeric_problem(f, v)}", field=name)
    return v


def _label(session: Mapping[str, Any], name: str) -> str:
    v = _scalar(session, name)
    if not isinstance(v, str):
        raise InputError(f"{name!r} must be a string, got {type(v).__name__} {v!r:.40}", field=name)
    return v


class FeatureBuilder:
    """Turns raw page views into the model's feature matrix.

    Holds the fitted vocabularies and (for the ranking set) the catalog; carries
    no other state, so one builder serves any number of threads.
    """

    def __init__(self, feature_set: str, vocabulary: Vocabulary, catalog: Catalog | None = None):
        if feature_set not in FEATURE_SETS:
            raise ValueError(
                f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}"
            )
        if feature_set == "ranking" and catalog is None:
            raise ValueError("the 'ranking' feature set needs a product catalog")
        self.feature_set = feature_set
        self.feature_names: tuple[str, ...] = FEATURE_SETS[feature_set]
        self.vocabulary = vocabulary
        self.catalog = catalog
        self.ranks_products = feature_set == "ranking"
        self.required_fields: tuple[str, ...] = (*CATEGORICAL_FIELDS, *SESSION_NUMERIC) + (
            (*VIEWED_FIELDS, "recommended_product_id") if self.ranks_products else ()
        )
        if catalog is not None:
            cat_codes = vocabulary.codes("current_category", catalog.categories)
            self._cat_codes = cat_codes.astype(np.float64)
            self._cat_codes.setflags(write=False)
            self.all_positions = np.arange(len(catalog), dtype=np.intp)
            self.all_positions.setflags(write=False)
            self._product = {
                p: (float(c), float(pr))
                for p, c, pr in zip(
                    catalog.product_ids.tolist(),
                    cat_codes.tolist(),
                    catalog.prices.tolist(),
                    strict=True,
                )
            }

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def candidate_category_code(self, position: int) -> float:
        """Category code of the catalog product at this position."""
        return float(self._cat_codes[position])

    def with_catalog(self, catalog: Catalog) -> FeatureBuilder:
        return FeatureBuilder(self.feature_set, self.vocabulary, catalog)

    # ---- one page view -------------------------------------------------------------------
    def session_row(self, session: Mapping[str, Any]) -> list[float]:
        """The 19 seed features of one page view, in pure Python (about a microsecond)."""
        if not isinstance(session, Mapping):
            raise TypeError(f"a session must be a mapping, got {type(session).__name__}")
        voc = self.vocabulary
        cat = voc.code("current_category", _label(session, "current_category"))
        dev = voc.code("device_type", _label(session, "device_type"))
        trf = voc.code("traffic_source", _label(session, "traffic_source"))
        price = _number(session, "current_price")
        cart = _number(session, "products_in_cart")
        t = _number(session, "time_on_page_sec")
        s = _number(session, "scroll_depth")
        img = _number(session, "clicked_product_image")
        mins = _number(session, "session_length_mins")
        viewed = _number(session, "products_viewed_count")
        return [
            float(cat),
            price,
            cart,
            float(dev),
            float(trf),
            t,
            s,
            img,
            mins,
            viewed,
            float(cart > 0),
            float(t >= 60 and s >= 0.6),
            float(price > 100),
            float(price < 30),
            float(viewed >= 3),
            min(max(t / 300 * s, 0.0), 1.0),
            float(mins >= 10 and viewed >= 3),
            float(t < 30 and s < 0.3),
            viewed / (mins + 1),
        ]

    def viewed_ids(self, session: Mapping[str, Any]) -> tuple[str, ...]:
        """Products this session has seen (current and previous three), "NONE" excluded."""
        return tuple(v for v in (_label(session, f) for f in VIEWED_FIELDS) if v != NONE_PRODUCT)

    def row(self, session: Mapping[str, Any]) -> list[float]:
        """All features of one page view, recommended product included."""
        row = self.session_row(session)
        if self.ranks_products:
            viewed = self.viewed_ids(session)
            rec = _label(session, "recommended_product_id")
            try:
                rcat, rprice = self._product[rec]
            except KeyError:
                self.catalog.index(rec)  # raises the catalog's InputError
                raise
            row += [
                rcat,
                rprice,
                float(rcat == row[0]),
                rprice / max(row[1], MIN_PRICE_FOR_RATIO),
                float(rec in viewed),
            ]
        return row

    # ---- columns -------------------------------------------------------------------------
    def transform(self, columns: Mapping[str, Any], offset: int = 0) -> np.ndarray:
        """The (n, n_features) float64 matrix of a batch given as columns, validated by row."""
        missing = [f for f in self.required_fields if f not in columns]
        if missing:
            raise InputError(f"missing field {missing[0]!r}", field=missing[0])
        n = len(np.asarray(columns[self.required_fields[0]]).reshape(-1))
        voc = self.vocabulary
        num = {}
        for name in SESSION_NUMERIC:
            x = as_float_array(name, columns[name], n)
            validate_numeric(name, x, offset)
            num[name] = x
        codes = {
            name: voc.codes(name, as_str_array(name, columns[name], n), offset).astype(np.float64)
            for name in CATEGORICAL_FIELDS
        }
        price, cart = num["current_price"], num["products_in_cart"]
        t, s = num["time_on_page_sec"], num["scroll_depth"]
        mins, viewed = num["session_length_mins"], num["products_viewed_count"]
        X = np.empty((n, self.n_features), dtype=np.float64)
        X[:, 0] = codes["current_category"]
        X[:, 1] = price
        X[:, 2] = cart
        X[:, 3] = codes["device_type"]
        X[:, 4] = codes["traffic_source"]
        X[:, 5] = t
        X[:, 6] = s
        X[:, 7] = num["clicked_product_image"]
        X[:, 8] = mins
        X[:, 9] = viewed
        X[:, 10] = cart > 0
        X[:, 11] = (t >= 60) & (s >= 0.6)
        X[:, 12] = price > 100
        X[:, 13] = price < 30
        X[:, 14] = viewed >= 3
        X[:, 15] = np.clip(t / 300 * s, 0.0, 1.0)
        X[:, 16] = (mins >= 10) & (viewed >= 3)
        X[:, 17] = (t < 30) & (s < 0.3)
        X[:, 18] = viewed / (mins + 1)
        if self.ranks_products:
            rec = as_str_array("recommended_product_id", columns["recommended_product_id"], n)
            idx = self.catalog.indices(rec, "recommended_product_id", offset)
            already = np.zeros(n, dtype=bool)
            for f in VIEWED_FIELDS:
                already |= as_str_array(f, columns[f], n) == rec
            X[:, 19] = self._cat_codes[idx]
            X[:, 20] = self.catalog.prices[idx]
            X[:, 21] = X[:, 19] == X[:, 0]
            X[:, 22] = X[:, 20] / np.maximum(price, MIN_PRICE_FOR_RATIO)
            X[:, 23] = already
        return X

    def candidates(
        self, session_row: Sequence[float], candidate_idx: np.ndarray, viewed_idx: np.ndarray
    ) -> np.ndarray:
        """The feature matrix of one session against many products, by broadcasting.

        ``candidate_idx`` and ``viewed_idx`` are catalog positions.
        """
        m = len(candidate_idx)
        X = np.empty((m, self.n_features), dtype=np.float64)
        X[:, :19] = session_row
        X[:, 19] = self._cat_codes[candidate_idx]
        X[:, 20] = self.catalog.prices[candidate_idx]
        X[:, 21] = X[:, 19] == session_row[0]
        X[:, 22] = X[:, 20] / max(session_row[1], MIN_PRICE_FOR_RATIO)
        X[:, 23] = np.isin(candidate_idx, viewed_idx)
        return X
