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

from reco_fast.errors import InputError, shown, shown_values
from reco_fast.features import spec as _spec
from reco_fast.features.schema import (
    CATEGORICAL_FIELDS,
    FLOAT32_MAX,
    INT_EXACT,
    NONE_PRODUCT,
    NUMERIC_FIELDS,
    RowErrors,
    as_column,
    as_float_array,
    as_str_array,
    check_number,
    not_a_string,
    raise_rows,
    reject,
    validate_numeric,
)

__all__ = [
    "CANDIDATE_FEATURES",
    "FEATURE_SETS",
    "SEED_FEATURES",
    "Catalog",
    "FeatureBuilder",
    "Vocabulary",
    "definition_sha256",
]

SEED_FEATURES: tuple[str, ...] = tuple(f.name for f in _spec.SEED)
CANDIDATE_FEATURES: tuple[str, ...] = tuple(f.name for f in _spec.CANDIDATE)
FEATURE_SETS: dict[str, tuple[str, ...]] = {k: v.names for k, v in _spec.FEATURE_SETS.items()}
MIN_PRICE_FOR_RATIO = _spec.MIN_PRICE_FOR_RATIO

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
_FAST_MAX = float(INT_EXACT)


def session_kernel_c(feature_set: str) -> tuple[str, str]:
    """C for ``FeatureBuilder.expand``: (definition, argument list) of ``rs_features``.

    The single-page-view path passes the raw numbers of :meth:`FeatureBuilder.raw`
    straight to C, which derives the features there: building a 24-element
    Python list and converting it costs more than the trees. Generated from the
    feature specification (:mod:`reco_fast.features.spec`), like the Python and numpy paths.
    """
    return _spec.c_session_kernel(_spec.FEATURE_SETS[feature_set])


def candidate_kernel_c(feature_set: str) -> str:
    """C for ``FeatureBuilder.candidate_rest``: ``rs_candidate_rest``, from the specification."""
    return _spec.c_candidate_kernel(_spec.FEATURE_SETS[feature_set])


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
                f"{field_name!r} has unknown value {shown(value)}; the model knows "
                f"{shown_values(self.values(field_name))}",
                field=field_name,
            ) from None

    def codes(
        self,
        field_name: str,
        values: np.ndarray,
        offset: int = 0,
        errors: RowErrors | None = None,
    ) -> np.ndarray:
        """Vectorised lookup: the code is the position in the sorted vocabulary.

        Unknown values raise, or (with ``errors``) are recorded and get code 0.
        """
        vocab = np.asarray(self.values(field_name))
        pos = np.searchsorted(vocab, values).clip(0, len(vocab) - 1)
        bad = np.flatnonzero(vocab[pos] != values)
        reject(
            field_name,
            bad,
            lambda r: (
                f"has unknown value {shown(str(values[r]))}; the model knows "
                f"{shown_values(vocab.tolist())}"
            ),
            offset,
            errors,
        )
        pos[bad] = 0
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
        # rec_price_ratio divides a price by as little as 0.01: keep it within float32
        bad = np.flatnonzero(prices / MIN_PRICE_FOR_RATIO > FLOAT32_MAX)
        if bad.size:
            raise_rows("price", bad, f"must be at most {FLOAT32_MAX * MIN_PRICE_FOR_RATIO:.6g}")
        order = np.argsort(ids, kind="stable")
        ids, cats, prices = ids[order], cats[order], prices[order]
        dup = np.flatnonzero(ids[1:] == ids[:-1])
        if dup.size:
            raise InputError(
                f"catalog has duplicate product_id {shown(str(ids[dup[0]]))}", field="product_id"
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
                f"{field_name!r} {shown(product_id)} is not in the catalog ({len(self)} products)",
                field=field_name,
            ) from None

    def indices(
        self,
        ids: np.ndarray,
        field_name: str = "recommended_product_id",
        offset: int = 0,
        errors: RowErrors | None = None,
    ) -> np.ndarray:
        """Catalog positions of ``ids``; unknown ids raise, or (with ``errors``) are
        recorded and get position 0."""
        pos = np.searchsorted(self.product_ids, ids).clip(0, len(self) - 1)
        bad = np.flatnonzero(self.product_ids[pos] != ids)
        reject(
            field_name,
            bad,
            lambda r: f"{shown(str(ids[r]))} is not in the catalog ({len(self)} products)",
            offset,
            errors,
        )
        pos[bad] = 0
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


def _number(session: Mapping[str, Any], name: str, nan_ok: bool) -> float:
    return check_number(name, _scalar(session, name), nan_ok=nan_ok)


def _label(session: Mapping[str, Any], name: str) -> str:
    v = _scalar(session, name)
    if not isinstance(v, str):
        raise InputError(f"{name!r} {not_a_string(v)}", field=name)
    return v


def _viewed_strings(session: Mapping[str, Any]) -> tuple[str, str, str, str] | None:
    """The current and previous three product ids ("NONE" kept), or None if any is missing
    or not a string (the caller's checked path then names the field)."""
    try:
        ids = (
            session["current_product_id"],
            session["prev_product_1"],
            session["prev_product_2"],
            session["prev_product_3"],
        )
    except (KeyError, TypeError):
        return None
    if type(ids[0]) is str and type(ids[1]) is str and type(ids[2]) is str and type(ids[3]) is str:
        return ids
    return None


class FeatureBuilder:
    """Turns raw page views into the model's feature matrix.

    Holds the fitted vocabularies and (for the ranking set) the catalog; carries
    no other state, so one builder serves any number of threads.
    """

    def __init__(
        self,
        feature_set: str,
        vocabulary: Vocabulary,
        catalog: Catalog | None = None,
        *,
        nan_ok: bool = False,
    ):
        """``nan_ok``: NaN (a missing value) is a valid number in every numeric field, for
        a model that routes missing values (:func:`~reco_fast.features.schema.nan_ok_for`
        of the artifact's ``missing_values``); otherwise it is an InputError naming the
        field."""
        if feature_set not in FEATURE_SETS:
            raise ValueError(
                f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}"
            )
        if feature_set == "ranking" and catalog is None:
            raise ValueError("the 'ranking' feature set needs a product catalog")
        self.feature_set = feature_set
        self.nan_ok = bool(nan_ok)
        self.spec = _spec.FEATURE_SETS[feature_set]
        self.feature_names: tuple[str, ...] = self.spec.names
        self._expand = _spec.python_expander(self.spec)
        self._expand_session = _spec.python_expander(
            _spec.FeatureSet(
                f"{feature_set}-session", self.spec.session, (), self.spec.session_inputs
            )
        )
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
            self._buffers: dict[Any, tuple[Any, Any]] = {}
            self.category_codes: list[float] = self._cat_codes.tolist()
            self.product_id_list: list[str] = catalog.product_ids.tolist()
            self.price_list: list[float] = catalog.prices.tolist()
            self.all_positions = np.arange(len(catalog), dtype=np.int64)
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

    @property
    def required_catalog(self) -> Catalog:
        """The catalog the ranking set scores candidates from.

        Raises
        ------
        ValueError
            This builder has no catalog (the seed set ranks no products).
        """
        if self.catalog is None:
            raise ValueError(f"the {self.feature_set!r} feature set has no product catalog")
        return self.catalog

    def catalog_buffers(self, ffi: Any) -> tuple[Any, Any]:
        """cffi views of the catalog's category codes and prices, made once per builder."""
        cached = self._buffers.get(ffi)
        if cached is None:
            cached = (
                ffi.from_buffer("double[]", self._cat_codes),
                ffi.from_buffer("double[]", self.required_catalog.prices),
            )
            self._buffers[ffi] = cached
        return cached

    def with_catalog(self, catalog: Catalog) -> FeatureBuilder:
        return FeatureBuilder(self.feature_set, self.vocabulary, catalog, nan_ok=self.nan_ok)

    # ---- one page view -------------------------------------------------------------------
    def session_raw(self, session: Mapping[str, Any]) -> tuple[float, ...]:
        """The ten raw numbers of a page view the seed features derive from (codes included).

        The fast path assumes a valid session and checks it with chained
        comparisons; anything unusual (a missing key, a string where a number
        belongs, NaN, a value out of range, an unknown label) falls through to
        :meth:`_checked_session_raw`, which names the field.
        """
        try:
            s = session
            cat_index, dev_index, trf_index = self.vocabulary._index
            raw = (
                cat_index[s["current_category"]],
                s["current_price"],
                s["products_in_cart"],
                dev_index[s["device_type"]],
                trf_index[s["traffic_source"]],
                s["time_on_page_sec"],
                s["scroll_depth"],
                s["clicked_product_image"],
                s["session_length_mins"],
                s["products_viewed_count"],
            )
            _, price, cart, _, _, t, sc, img, mins, viewed = raw
            # Comparisons raise TypeError for strings and None, and are False for NaN;
            # a type the C call cannot convert is caught by the caller's fallback. The
            # bound 2**53 sends larger numbers to the checked path, which converts an
            # int float64 cannot hold to float32 once (a C double argument would round
            # it twice);
            # `% 1` raises TypeError for complex numbers, which numpy orders and C
            # would truncate to their real part: the checked path refuses them.
            if (
                0.0 <= price <= _FAST_MAX
                and 0.0 <= t <= _FAST_MAX
                and 0.0 <= mins <= _FAST_MAX
                and 0.0 <= sc <= 1.0
                and (img == 0 or img == 1)
                and 0 <= cart <= _FAST_MAX
                and cart % 1 == 0
                and 0 <= viewed <= _FAST_MAX
                and viewed % 1 == 0
                and (price + t + sc + mins + img) % 1 >= 0.0
            ):
                return raw
        except Exception:  # KeyError, TypeError, Decimal's InvalidOperation for NaN, ...
            pass
        return self._checked_session_raw(session)

    def _checked_session_raw(self, session: Mapping[str, Any]) -> tuple[float, ...]:
        if not isinstance(session, Mapping):
            raise TypeError(f"a session must be a mapping, got {type(session).__name__}")
        voc = self.vocabulary
        nan_ok = self.nan_ok
        return (
            voc.code("current_category", _label(session, "current_category")),
            _number(session, "current_price", nan_ok),
            _number(session, "products_in_cart", nan_ok),
            voc.code("device_type", _label(session, "device_type")),
            voc.code("traffic_source", _label(session, "traffic_source")),
            _number(session, "time_on_page_sec", nan_ok),
            _number(session, "scroll_depth", nan_ok),
            _number(session, "clicked_product_image", nan_ok),
            _number(session, "session_length_mins", nan_ok),
            _number(session, "products_viewed_count", nan_ok),
        )

    def raw(self, session: Mapping[str, Any]) -> tuple[float, ...]:
        """Everything one page view's features derive from: the session's ten raw
        numbers, plus (ranking set) the recommended product's category code, price
        and whether the session already viewed it."""
        raw = self.session_raw(session)
        if not self.ranks_products:
            return raw
        seen = _viewed_strings(session)
        if seen is not None:
            try:
                rec = session["recommended_product_id"]
                rcat, rprice = self._product[rec]
                return (*raw, rcat, rprice, 1.0 if rec in seen else 0.0)
            except (KeyError, TypeError):
                pass
        return self.checked_raw(session)

    def checked_raw(self, session: Mapping[str, Any]) -> tuple[float, ...]:
        """:meth:`raw` with every field validated, raising an InputError that names it."""
        raw = self._checked_session_raw(session)
        if not self.ranks_products:
            return raw
        viewed = self.viewed_ids(session)
        rec = _label(session, "recommended_product_id")
        rcat, rprice = (
            self._product[rec] if rec in self._product else (self.required_catalog.index(rec), 0)
        )
        return (*raw, rcat, rprice, 1.0 if rec in viewed else 0.0)

    def expand(self, raw: Sequence[float]) -> list[float]:
        """The features from :meth:`raw`'s numbers (the C session kernel computes the same).

        ``raw`` holds the session inputs, then (ranking set) the candidate inputs, in
        the specification's input order; a session-only ``raw`` gives the session block.
        """
        if len(raw) == len(self.spec.session_inputs) and self.spec.candidate:
            return self._expand_session(*raw)
        return self._expand(*raw)

    def row(self, session: Mapping[str, Any]) -> list[float]:
        """All features of one page view, in pure Python (about a microsecond)."""
        return self.expand(self.raw(session))

    def session_row(self, session: Mapping[str, Any]) -> list[float]:
        """The 19 seed features of one page view."""
        return self.expand(self.session_raw(session))

    def viewed_ids(self, session: Mapping[str, Any]) -> tuple[str, ...]:
        """Products this session has seen (current and previous three), "NONE" excluded."""
        ids = _viewed_strings(session)
        if ids is not None:
            return tuple(v for v in ids if v != NONE_PRODUCT)
        return tuple(v for v in (_label(session, f) for f in VIEWED_FIELDS) if v != NONE_PRODUCT)

    # ---- columns -------------------------------------------------------------------------
    def placeholder(self, field_name: str) -> Any:
        """A value every check accepts for this field (stands in for a missing or bad one
        while the rest of an invalid row is still checked)."""
        if field_name in NUMERIC_FIELDS:
            return 0.0
        if field_name in _CODE_FIELD:
            return self.vocabulary.values(field_name)[0]
        if field_name == "recommended_product_id":
            return str(self.required_catalog.product_ids[0])
        return NONE_PRODUCT

    def transform(
        self, columns: Mapping[str, Any], offset: int = 0, errors: RowErrors | None = None
    ) -> np.ndarray:
        """The (n, n_features) float64 matrix of a batch given as columns, validated by row.

        Without ``errors`` the first invalid rows raise an InputError naming the
        field and the rows (counted from ``offset``). With a :class:`RowErrors`,
        every invalid row is recorded there (one entry per bad field) and filled
        with valid placeholders, so the matrix is complete; the caller must not
        use those rows (``errors.invalid(n)``). A missing column or columns of
        different lengths concern the whole batch and always raise.
        """
        missing = [f for f in self.required_fields if f not in columns]
        if missing:
            raise InputError(f"missing field {missing[0]!r}", field=missing[0])
        first = self.required_fields[0]
        n = as_column(first, columns[first]).shape[0]
        voc = self.vocabulary
        num = {}
        for name in SESSION_NUMERIC:
            x = as_float_array(name, columns[name], n, errors, offset)
            num[name] = validate_numeric(name, x, offset, errors, self.nan_ok)
        codes = {
            name: voc.codes(
                name,
                as_str_array(
                    name, columns[name], n, errors, offset, self.placeholder(name), objects=True
                ),
                offset,
                errors,
            ).astype(np.float64)
            for name in CATEGORICAL_FIELDS
        }
        inputs: dict[str, Any] = {
            "cat": codes["current_category"],
            "price": num["current_price"],
            "cart": num["products_in_cart"],
            "dev": codes["device_type"],
            "trf": codes["traffic_source"],
            "t": num["time_on_page_sec"],
            "sc": num["scroll_depth"],
            "img": num["clicked_product_image"],
            "mins": num["session_length_mins"],
            "viewed": num["products_viewed_count"],
        }
        if self.ranks_products:
            name = "recommended_product_id"
            rec = as_str_array(
                name, columns[name], n, errors, offset, self.placeholder(name), objects=True
            )
            idx = self.required_catalog.indices(rec, name, offset, errors)
            already = np.zeros(n, dtype=bool)
            for f in VIEWED_FIELDS:
                seen = as_str_array(f, columns[f], n, errors, offset, NONE_PRODUCT, objects=True)
                already |= seen == rec
            inputs["rcat"] = self._cat_codes[idx]
            inputs["rprice"] = self.required_catalog.prices[idx]
            inputs["already"] = already.astype(np.float64)
        X = np.empty((n, self.n_features), dtype=np.float64)
        _spec.numpy_columns(self.spec, inputs, X)
        return X

    def candidate_rest(
        self, session_row: Sequence[float], candidate_idx: np.ndarray, viewed: np.ndarray
    ) -> np.ndarray:
        """The five candidate features of many products for one session, feature-major.

        Returns shape (5, n_candidates): each row of numpy work is contiguous,
        and the compiled prefix kernel reads it column by column. ``candidate_idx``
        are catalog positions and ``viewed`` a boolean mask over the catalog.
        With the 19 session features in front, candidate i's features equal
        :meth:`transform` of that session with that recommended product.
        """
        inputs = {
            "cat": float(session_row[0]),
            "price": float(session_row[1]),
            "rcat": np.take(self._cat_codes, candidate_idx),
            "rprice": np.take(self.required_catalog.prices, candidate_idx),
            "already": viewed[candidate_idx].astype(np.float64),
        }
        R = np.empty((len(self.spec.candidate), len(candidate_idx)), dtype=np.float64)
        _spec.numpy_columns(self.spec, inputs, R, block="candidate")
        return R


def definition_sha256(feature_set: str) -> str:
    """A digest of everything that defines ``feature_set``'s values, recorded in each artifact.

    It is the feature specification's hash (:func:`reco_fast.features.spec.spec_hash`:
    every feature's name and expression, in order, and every input with its
    source), from which the Python, numpy and C paths are all generated. An
    artifact whose digest differs was compiled against other definitions:
    ``reco_fast.load`` refuses it ("rebuild the artifact"). How raw fields
    become inputs (vocabulary codes, catalog lookups) is checked by the golden
    raw sessions every load replays.

    Raises
    ------
    ValueError
        ``feature_set`` is not one of :data:`FEATURE_SETS`.
    """
    fs = spec_for(feature_set)
    if fs is None:
        raise ValueError(f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}")
    return _spec.spec_hash(fs)


def spec_for(feature_set: str) -> _spec.FeatureSet | None:
    """The specification of a feature set by name: the seed's sets or an event set
    (``events[+category][+price]``, :mod:`reco_fast.features.events`); None if unknown."""
    if feature_set in _spec.FEATURE_SETS:
        return _spec.FEATURE_SETS[feature_set]
    from reco_fast.features.events import parse_feature_set

    return parse_feature_set(feature_set)
