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
DICT_INDEX_MAX = 65_536
"""Catalogs up to this size keep a dict from product id to position (and the builder
keeps Python lists of codes, ids and prices): a lookup costs 50 ns instead of ~1 µs,
at about 200 bytes per product."""


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


def _factorize(labels: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted distinct labels, int32 index of each label into them)."""
    first: dict[str, int] = {}
    seen = np.fromiter(
        (first.setdefault(v, len(first)) for v in labels), dtype=np.int32, count=len(labels)
    )
    names = sorted(first)
    remap = np.empty(len(names), dtype=np.int32)
    remap[[first[v] for v in names]] = np.arange(len(names), dtype=np.int32)
    return tuple(names), remap[seen]


def _checked_prices(prices: Any, n: int) -> np.ndarray:
    """Catalog prices as float64, each finite, >= 0 and small enough for every price feature."""
    prices = as_float_array("price", prices, n)
    bad = np.flatnonzero(~np.isfinite(prices) | (prices < 0) | (prices > FLOAT32_MAX))
    if bad.size:
        raise_rows("price", bad, "must be a finite, non-negative price")
    # rec_price_ratio divides a price by as little as 0.01: keep it within float32
    bad = np.flatnonzero(prices / MIN_PRICE_FOR_RATIO > FLOAT32_MAX)
    if bad.size:
        raise_rows("price", bad, f"must be at most {FLOAT32_MAX * MIN_PRICE_FOR_RATIO:.6g}")
    return prices


class Catalog:
    """The products a model can recommend: ids sorted, with category and price.

    Kept as parallel numpy arrays so a whole catalog becomes a candidate matrix by
    broadcasting: ``product_ids`` (a numpy unicode array, sorted), ``prices``
    (float64, dollars) and each product's category as an index into the sorted
    ``category_names`` (``categories`` gives the names as an object array). A catalog
    of up to :data:`DICT_INDEX_MAX` products also keeps a dict from id to position
    for the single-session path; a larger one is searched (``numpy.searchsorted``,
    about a microsecond per id), which keeps a million products at about 60 bytes each
    with 8-character ids, cell index included (``reco-fast bench --catalog-sizes``).

    Immutable: a changed catalog is a new one (:meth:`Model.with_catalog`), so requests
    in flight keep the catalog they started with.

    Parameters
    ----------
    product_ids
        One id per product (str; unique; not ``"NONE"``), any order.
    categories
        Each product's category name (str), one of the model's vocabulary.
    prices
        Each product's price in dollars (finite, >= 0).

    Raises
    ------
    InputError
        An id that is not a string, empty, duplicated or the reserved ``"NONE"``; a
        category that is not a string; a price that is not a finite number in
        [0, 3.4e36]. The message names the field and the first rows.
    """

    __slots__ = ("_index", "category_index", "category_names", "prices", "product_ids")
    product_ids: np.ndarray
    prices: np.ndarray
    category_names: tuple[str, ...]
    category_index: np.ndarray
    _index: dict[str, int] | None

    def __init__(self, product_ids: Any, categories: Any, prices: Any) -> None:
        ids = as_str_array("product_id", product_ids)
        cats = as_str_array("category", categories, len(ids))
        prices = _checked_prices(prices, len(ids))
        if len(ids) == 0:
            raise InputError("the catalog is empty", field="product_id")
        order = np.argsort(ids, kind="stable")
        ids, prices = ids[order], prices[order]
        names, cat_index = _factorize(cats[order].tolist())
        dup = np.flatnonzero(ids[1:] == ids[:-1])
        if dup.size:
            raise InputError(
                f"catalog has duplicate product_id {shown(str(ids[dup[0]]))}", field="product_id"
            )
        if np.any(ids == NONE_PRODUCT):
            raise InputError(
                f"{NONE_PRODUCT!r} is reserved and cannot be a product_id", field="product_id"
            )
        self._fill(ids, prices, names, cat_index)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Catalog is immutable: build a new one and call Model.with_catalog")

    def __repr__(self) -> str:
        return f"Catalog({len(self)} products, {len(self.category_names)} categories)"

    @property
    def categories(self) -> np.ndarray:
        """Each product's category name, an object array of shape (n_products,)."""
        names = np.empty(len(self.category_names), dtype=object)
        names[:] = self.category_names
        return names[self.category_index]

    @property
    def nbytes(self) -> int:
        """Bytes held by the catalog's arrays (the id dict of a small catalog not counted)."""
        return int(self.product_ids.nbytes + self.prices.nbytes + self.category_index.nbytes)

    def __len__(self) -> int:
        return len(self.product_ids)

    @classmethod
    def from_records(cls, records: Any) -> Catalog:
        """A catalog from ``records``: a list of dicts, a dict of columns or a DataFrame with
        ``product_id``, ``category`` and ``price``.

        Raises
        ------
        InputError
            A missing column or row field, or a value :class:`Catalog` refuses.
        TypeError
            ``records`` is none of those.
        """
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

    def position(self, product_id: Any) -> int | None:
        """The catalog position of ``product_id`` (a str), or None if it is not listed."""
        index = self._index
        if index is not None:
            return index.get(product_id) if isinstance(product_id, str) else None
        if not isinstance(product_id, str):
            return None
        ids = self.product_ids
        pos = int(ids.searchsorted(product_id))
        # numpy compares unicode without trailing NULs: "a\x00" must not find "a"
        if pos < len(ids) and ids[pos] == product_id and not product_id.endswith("\x00"):
            return pos
        return None

    def index(self, product_id: Any, field_name: str = "recommended_product_id") -> int:
        """The catalog position of ``product_id``.

        Raises
        ------
        InputError
            It is not listed; the message names ``field_name``.
        """
        pos = self.position(product_id)
        if pos is None:
            raise InputError(
                f"{field_name!r} {shown(product_id)} is not in the catalog ({len(self)} products)",
                field=field_name,
            )
        return pos

    def indices(
        self,
        ids: np.ndarray,
        field_name: str = "recommended_product_id",
        offset: int = 0,
        errors: RowErrors | None = None,
    ) -> np.ndarray:
        """Catalog positions (int64) of ``ids`` (a str array, one per row); unknown ids
        raise an InputError naming ``field_name`` and the rows (numbered from ``offset``),
        or (with ``errors``) are recorded there and get position 0."""
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

    @classmethod
    def _sorted(
        cls, ids: np.ndarray, prices: np.ndarray, names: tuple[str, ...], cat_index: np.ndarray
    ) -> Catalog:
        """A catalog from arrays already checked and sorted by id (:meth:`updated`)."""
        self = object.__new__(cls)
        self._fill(ids, prices, names, cat_index)
        return self

    def _fill(
        self, ids: np.ndarray, prices: np.ndarray, names: tuple[str, ...], cat_index: np.ndarray
    ) -> None:
        """Set the (read-only) arrays, and the id dict of a small catalog."""
        for value in (ids, prices, cat_index):
            value.setflags(write=False)
        set_ = object.__setattr__
        set_(self, "product_ids", ids)
        set_(self, "prices", prices)
        set_(self, "category_names", names)
        set_(self, "category_index", cat_index)
        index = {p: i for i, p in enumerate(ids.tolist())} if len(ids) <= DICT_INDEX_MAX else None
        set_(self, "_index", index)

    def updated(
        self,
        prices: Mapping[str, Any] | None = None,
        add: Any = None,
        remove: Iterable[str] | None = None,
    ) -> Catalog:
        """A new catalog with some products delisted, repriced or added; this one unchanged.

        Parameters
        ----------
        prices
            ``{product_id: new price}`` for listed products (after ``remove``).
        add
            New products, in any form :meth:`from_records` takes.
        remove
            Product ids to delist.

        Only the changed rows are validated; the rest are copied (numpy, no per-product
        Python work), so a one-price change of a million products costs a few
        milliseconds here (``reco-fast bench --catalog-sizes`` measures it with the cell
        index rebuilt: :meth:`reco_fast.Model.with_catalog_update`).

        Raises
        ------
        InputError
            An id to reprice or remove that is not listed, one to add that already is, a
            bad new price, or a catalog left empty.
        """
        ids, price, cat_index, names = (
            self.product_ids,
            self.prices,
            self.category_index,
            self.category_names,
        )
        if remove is not None:
            gone = np.asarray([self.index(p, "remove") for p in remove], dtype=np.int64)
            keep = np.ones(len(ids), dtype=bool)
            keep[gone] = False
            ids, price, cat_index = ids[keep], price[keep], cat_index[keep]
        if prices:
            price = price.copy()
            lookup = Catalog._sorted(ids, price.copy(), names, cat_index) if remove else self
            where = np.asarray([lookup.index(p, "prices") for p in prices], dtype=np.int64)
            price[where] = _checked_prices(list(prices.values()), len(where))
        if add is not None:
            extra = add if isinstance(add, Catalog) else Catalog.from_records(add)
            clash = np.intersect1d(ids, extra.product_ids)
            if clash.size:
                raise InputError(
                    f"cannot add product {shown(str(clash[0]))}: it is already listed",
                    field="product_id",
                )
            merged_names = tuple(sorted(set(names) | set(extra.category_names)))
            remap_old = np.searchsorted(merged_names, names).astype(np.int32)
            remap_new = np.searchsorted(merged_names, extra.category_names).astype(np.int32)
            all_ids = np.concatenate([ids, extra.product_ids])
            order = np.argsort(all_ids, kind="stable")
            ids = all_ids[order]
            price = np.concatenate([price, extra.prices])[order]
            cat_index = np.concatenate([remap_old[cat_index], remap_new[extra.category_index]])[
                order
            ]
            names = merged_names
        if len(ids) == 0:
            raise InputError("the catalog is empty", field="product_id")
        used = np.unique(cat_index)
        if len(used) < len(names):  # a delisted category's name goes too
            remap = np.full(len(names), -1, dtype=np.int32)
            remap[used] = np.arange(len(used), dtype=np.int32)
            names, cat_index = tuple(names[i] for i in used.tolist()), remap[cat_index]
        return Catalog._sorted(
            np.ascontiguousarray(ids),
            np.ascontiguousarray(price, dtype=np.float64),
            names,
            np.ascontiguousarray(cat_index, dtype=np.int32),
        )

    def to_rows(self) -> list[tuple[str, str, float]]:
        """Every product as ``(product_id, category, price)``, in catalog (id) order."""
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
            names = np.asarray(catalog.category_names, dtype=str)
            try:
                cat_codes = vocabulary.codes("current_category", names)[catalog.category_index]
            except InputError:  # name the products' rows, not the names'
                cat_codes = vocabulary.codes("current_category", catalog.categories)
            self._cat_codes = cat_codes.astype(np.float64)
            self._cat_codes.setflags(write=False)
            self._buffers: dict[Any, tuple[Any, Any]] = {}
            # per-position lookups of the recommend path: lists for a small catalog
            # (fast scalar indexing), the arrays themselves for a large one (memory)
            small = len(catalog) <= DICT_INDEX_MAX
            self.category_codes: list[float] | np.ndarray = (
                self._cat_codes.tolist() if small else self._cat_codes
            )
            self.product_id_list: list[str] | np.ndarray = (
                catalog.product_ids.tolist() if small else catalog.product_ids
            )
            self.price_list: list[float] | np.ndarray = (
                catalog.prices.tolist() if small else catalog.prices
            )
            self._product: dict[str, tuple[float, float]] | None = None
            if small:
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
    def all_positions(self) -> np.ndarray:
        """Every catalog position, int64 (the numpy recommend path's pool)."""
        return np.arange(len(self.required_catalog), dtype=np.int64)

    def product(
        self, product_id: Any, field_name: str = "recommended_product_id"
    ) -> tuple[float, float]:
        """(category code, price) of a catalog product; InputError if it is not listed."""
        if self._product is not None and isinstance(product_id, str):
            found = self._product.get(product_id)
            if found is not None:
                return found
        pos = self.required_catalog.index(product_id, field_name)
        return float(self._cat_codes[pos]), float(self.required_catalog.prices[pos])

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

    def catalog_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The catalog's category codes and prices: float64, shape (n_products,), catalog order."""
        return self._cat_codes, self.required_catalog.prices

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
                rcat, rprice = (
                    self._product[rec] if self._product is not None else self.product(rec)
                )
                return (*raw, rcat, rprice, 1.0 if rec in seen else 0.0)
            except (KeyError, TypeError, InputError):
                pass
        return self.checked_raw(session)

    def checked_raw(self, session: Mapping[str, Any]) -> tuple[float, ...]:
        """:meth:`raw` with every field validated, raising an InputError that names it."""
        raw = self._checked_session_raw(session)
        if not self.ranks_products:
            return raw
        viewed = self.viewed_ids(session)
        rec = _label(session, "recommended_product_id")
        rcat, rprice = self.product(rec)
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
