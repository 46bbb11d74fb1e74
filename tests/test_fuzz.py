"""Property-based tests: arbitrary values at every public entry point.

Every outcome must be either a correct result (checked against a reference:
another backend, the single vs the batch path, a clean contiguous float64 copy)
or an InputError (or TypeError) naming the field, and for batches the row:
never another exception, a crash, a hang or a wrong number.

Derandomized (a fixed seed) so CI is reproducible; the whole file runs in well
under a minute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reco_fast
from reco_fast import InputError
from reco_fast.features.schema import FLOAT32_MAX, NONE_PRODUCT, NUMERIC_FIELDS
from reco_fast.serve.recommend import CART_FIELD, EXCLUDABLE
from tests.helpers import Built, nearest_float32

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# hypothesis' own arrays() casts out-of-range floats for float16 on purpose
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
TOLERANCE = 1e-12  # between backends (each is verified against scikit-learn to 1e-12)

# ---- arbitrary values ------------------------------------------------------------------

SPECIAL = [
    None,
    True,
    False,
    0,
    -1,
    10**400,
    -(10**400),
    2**64,
    2**63 - 1,
    0.0,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e39,
    -1e39,
    FLOAT32_MAX,
    np.nextafter(FLOAT32_MAX, np.inf),
    5e-324,
    "",
    "NONE",
    "nan",
    "1.5",
    b"",
    b"Mobile",
    "\x00",
    [],
    {},
    (),
    [1.0],
    {"a": 1},
    np.nan,
    np.float64("nan"),
    np.float32(0.5),
    np.float16(3.0),
    np.int8(-3),
    np.uint64(2**64 - 1),
    np.int64(2),
    np.bool_(True),
    np.str_("Mobile"),
    np.datetime64("2024-01-01"),
    np.timedelta64(3, "s"),
    np.complex128(1 + 1j),
    1 + 0j,
]

scalars = st.one_of(
    st.sampled_from(SPECIAL),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=4),
    st.complex_numbers(max_magnitude=10),
    st.floats(width=32).map(np.float32),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.integers(0, 255).map(np.uint8),
    st.floats(width=16).map(np.float16),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


def number_variants(x: float, integer: bool) -> st.SearchStrategy[Any]:
    """A valid number in many Python and numpy spellings."""
    options: list[Any] = [x, np.float64(x), np.float32(x) if np.float32(x) == x else x]
    if integer:
        options += [int(x), np.int64(int(x)), np.uint8(int(x)) if 0 <= x < 256 else int(x)]
        if x in (0, 1):
            options.append(bool(x))
    return st.sampled_from(options)


def valid_number(name: str) -> st.SearchStrategy[Any]:
    field = NUMERIC_FIELDS[name]
    high = min(field.high, 1e6)
    if field.integer:
        base = st.integers(int(field.low), int(min(high, 50))).map(float)
    else:
        base = st.one_of(
            st.floats(field.low, high, allow_nan=False),
            st.sampled_from([field.low, high, 0.6, 60.0, 30.0, 10.0, 100.0]).filter(
                lambda v: field.low <= v <= field.high
            ),
        )
    return base.flatmap(lambda x: number_variants(x, field.integer))


def near_miss_label(values: list[str]) -> st.SearchStrategy[Any]:
    """A known label, or one a character away from it (case, padding, a NUL, bytes)."""
    known = st.sampled_from(values)
    return st.one_of(
        known,
        known.map(np.str_),
        known.map(str.lower),
        known.map(lambda v: v + "\x00"),
        known.map(lambda v: " " + v),
        known.map(lambda v: v.encode()),
    )


# ---- the reference: which fields of a page view are invalid ----------------------------

_NUMBER_TYPES = (bool, int, float, np.integer, np.floating, np.bool_)


def number_ok(name: str, v: Any) -> bool:
    field = NUMERIC_FIELDS[name]
    if isinstance(v, (str, bytes)) or not isinstance(v, _NUMBER_TYPES):
        return False
    try:
        x = float(v)
    except OverflowError:
        return False
    if not (math.isfinite(x) and field.low <= x <= field.high):
        return False
    return not field.integer or x == math.floor(x)


class Reference:
    """What the schema says about each field, written independently of the library."""

    def __init__(self, model: reco_fast.Model):
        builder = model.builder
        voc = builder.vocabulary
        self.required = builder.required_fields
        self.labels = {
            "current_category": set(voc.categories),
            "device_type": set(voc.devices),
            "traffic_source": set(voc.traffic_sources),
        }
        self.products = set(builder.catalog.product_ids.tolist())

    def field_ok(self, name: str, v: Any) -> bool:
        if name in NUMERIC_FIELDS:
            return number_ok(name, v)
        if not isinstance(v, str):
            return False
        if name in self.labels:
            return v in self.labels[name]
        if name == "recommended_product_id":
            return v in self.products
        return True  # current and previous products: any id ("NONE" when absent)

    def bad_fields(self, session: Any) -> set[str | None]:
        if not isinstance(session, Mapping):
            return {None}
        return {f for f in self.required if f not in session or not self.field_ok(f, session[f])}

    def clean(self, session: Mapping[str, Any]) -> dict[str, Any]:
        """A valid session in plain Python types (float, str)."""
        return {
            f: float(session[f]) if f in NUMERIC_FIELDS else str(session[f]) for f in self.required
        }


@pytest.fixture(scope="module")
def model(built: Built) -> reco_fast.Model:
    return built.model


@pytest.fixture(scope="module")
def ref(model: reco_fast.Model) -> Reference:
    return Reference(model)


class PageViews(list):  # type: ignore[type-arg]
    """Real page views of the generated log (a short repr in hypothesis' reports)."""

    def __repr__(self) -> str:
        return f"<{len(self)} page views of the log>"


@pytest.fixture(scope="module")
def base_sessions(built: Built) -> PageViews:
    frame = built.log.drop(columns="recommendation_clicked").iloc[:200]
    return PageViews(
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in s.items()}
        for s in frame.to_dict("records")
    )


@st.composite
def sessions(draw: Any, base: list[dict[str, Any]], model: reco_fast.Model) -> dict[str, Any]:
    """A real page view, with some fields replaced (valid, near-miss or anything),
    some deleted and some extra keys."""
    builder = model.builder
    voc = builder.vocabulary
    products = builder.catalog.product_ids.tolist()
    s = dict(draw(st.sampled_from(base)))
    for f in draw(st.lists(st.sampled_from(builder.required_fields), max_size=4, unique=True)):
        if f in NUMERIC_FIELDS:
            value = draw(st.one_of(valid_number(f), anything))
        elif f in ("current_category", "device_type", "traffic_source"):
            value = draw(st.one_of(near_miss_label(list(voc.values(f))), anything))
        else:
            value = draw(st.one_of(near_miss_label(products), st.just(NONE_PRODUCT), anything))
        s[f] = value
    for f in draw(st.lists(st.sampled_from(builder.required_fields), max_size=1)):
        s.pop(f, None)
    for k in draw(st.lists(st.text(max_size=4), max_size=2)):
        s[k] = draw(anything)
    return s


def check_error(exc: BaseException, allowed: set[str | None], rows: set[int] | None = None) -> None:
    """An InputError naming one of the bad fields (and, for a batch, only bad rows)."""
    assert isinstance(exc, InputError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert exc.field in allowed, (exc.field, allowed, message)
    if exc.field is not None:
        assert repr(exc.field) in message, message
    if rows is not None:
        assert exc.rows and set(exc.rows) <= rows, (exc.rows, rows, message)
        assert "row" in message, message


# ---- predict_proba: one page view ------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_single_page_view(data: Any, model: reco_fast.Model, ref: Reference, base_sessions) -> None:
    s = data.draw(sessions(base_sessions, model))
    bad = ref.bad_fields(s)
    category = s.get("current_category")
    if isinstance(category, (list, tuple, dict, np.ndarray)) and category is not None:
        # a mapping whose first field is not a scalar is a dict of columns: a batch
        try:
            got = model.predict_proba(s)
        except (InputError, TypeError) as exc:
            assert isinstance(exc, InputError) and exc.field is not None, exc
            return
        assert isinstance(got, np.ndarray) and got.shape == (1,)
        return
    try:
        got = model.predict_proba(s)
    except Exception as exc:
        assert bad, f"valid session refused: {exc!r}"
        event("refused")
        check_error(exc, bad)
        assert math.isnan(model.predict_proba(s, on_invalid="nan"))
        return
    assert not bad, f"invalid fields {bad} accepted: {s}"
    event("scored")
    assert type(got) is float
    clean = ref.clean(s)
    # the checked single path, the batch path and the other backend agree
    assert got == model.predict_proba(clean)
    assert got == model.predict_proba([s])[0]
    assert got == model.predict_proba(s, on_invalid="nan")
    assert abs(got - model.using("tl2cgen").predict_proba(clean)) <= TOLERANCE


# ---- predict_proba / score_batch: batches ----------------------------------------------


def _object_columns(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, Any]:
    cols = {}
    for f in fields:
        if any(f in r for r in rows):
            items = [r.get(f, None) for r in rows]
            cols[f] = np.fromiter(items, dtype=object, count=len(items))
    return cols


@FUZZ
@given(data=st.data(), form=st.sampled_from(["list of dicts", "dict of columns", "DataFrame"]))
def test_batch(data: Any, form: str, model: reco_fast.Model, ref: Reference, base_sessions) -> None:
    rows = data.draw(st.lists(sessions(base_sessions, model), min_size=1, max_size=5))
    if form == "list of dicts":
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(rows) - 1))
            rows[i] = data.draw(anything.filter(lambda v: not isinstance(v, Mapping)))
        batch: Any = rows
        bad = {i: ref.bad_fields(r) for i, r in enumerate(rows)}
    else:
        # a key no row has is a missing column (the whole batch); otherwise a row
        # without the key holds None (dict of columns) or NaN (DataFrame)
        filled = [
            {f: r.get(f, None) for f in ref.required if any(f in q for q in rows)} for r in rows
        ]
        batch = (
            _object_columns(rows, ref.required)
            if form == "dict of columns"
            else pd.DataFrame(filled)
        )
        # a DataFrame column has one dtype: one complex cell makes the whole column complex,
        # so the rows to check are the frame's own, as pandas holds them
        seen = filled if form == "dict of columns" else batch.to_dict("records")
        bad = {i: ref.bad_fields(r) for i, r in enumerate(seen)}
        absent = [f for f in ref.required if f not in filled[0]]
        if absent:
            for on_invalid in ("raise", "nan"):
                with pytest.raises(InputError) as info:
                    model.predict_proba(batch, on_invalid=on_invalid)
                assert info.value.field in absent and "missing field" in str(info.value)
            return
    bad_rows = {i for i, fields in bad.items() if fields}
    valid_rows = [i for i in range(len(rows)) if i not in bad_rows]
    event(
        f"{form}: {'some' if valid_rows else 'no'} valid rows, {'some' if bad_rows else 'no'} bad"
    )
    # raise: an error naming a bad field and only rows where that field is bad
    try:
        got = model.predict_proba(batch)
    except Exception as exc:
        assert bad_rows, f"valid batch refused: {exc!r}"
        check_error(exc, set().union(*bad.values()), rows=bad_rows)
        assert {r for r in exc.rows} <= {i for i, f in bad.items() if exc.field in f}
    else:
        assert not bad_rows, f"invalid rows {bad} accepted"
        assert isinstance(got, np.ndarray) and got.shape == (len(rows),)
    # nan: every problem of every row, by row and field; valid rows as scored alone
    result = model.score_batch(batch, on_invalid="nan")
    assert {(e.row, e.field) for e in result.errors} == {
        (i, f) for i, fs in bad.items() for f in fs
    }
    proba = result.probabilities
    assert proba.shape == (len(rows),)
    assert np.isnan(proba[sorted(bad_rows)]).all()
    np.testing.assert_array_equal(proba, model.predict_proba(batch, on_invalid="nan"))
    if valid_rows:
        singles = [model.predict_proba(ref.clean(rows[i])) for i in valid_rows]
        assert proba[valid_rows].tolist() == singles
        other = model.using("tl2cgen").predict_proba([ref.clean(rows[i]) for i in valid_rows])
        assert np.max(np.abs(proba[valid_rows] - other)) <= TOLERANCE


# ---- predict_proba_features ------------------------------------------------------------

DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex128,
    np.dtype("U3"),
    np.dtype("datetime64[s]"),
    np.dtype("timedelta64[ms]"),
    np.dtype(object),
]


@st.composite
def feature_arrays(draw: Any, n_features: int) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if draw(st.integers(0, 4)):
        shape: tuple[int, ...] = (draw(st.integers(0, 6)), n_features)
    else:
        shape = draw(
            st.sampled_from(
                [(), (n_features,), (2, n_features, 1), (3, 1), (2, n_features - 1), (0, 0)]
            )
        )
    if dtype.kind == "O":
        elements = st.one_of(
            st.floats(),
            st.integers(-(10**40), 10**40),
            st.sampled_from([None, "x", "2.5", 10**400]),
        )
        X = np.empty(shape, dtype=object)
        for idx in np.ndindex(*shape):
            X[idx] = draw(elements)
    elif dtype.kind == "f" and draw(st.booleans()):
        # mostly plausible values, a few NaN / inf / too large
        plausible = st.floats(
            -1e3, 1e3, width=64 if dtype.itemsize == 8 else 32 if dtype.itemsize == 4 else 16
        )
        special = st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -0.0, FLOAT32_MAX])
        X = draw(
            hnp.arrays(dtype, shape, elements=st.one_of(plausible, plausible, plausible, special))
        )
    else:
        X = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["C", "F", "reversed", "strided", "readonly", "broadcast"]))
    if X.ndim == 2:
        if layout == "F":
            X = np.asfortranarray(X)
        elif layout == "reversed":
            X = X[::-1, ::-1] if X.shape[1] == n_features else X
        elif layout == "strided":
            wide = np.repeat(X, 2, axis=0)
            X = wide[::2]
        elif layout == "broadcast" and X.shape[0]:
            X = np.broadcast_to(X[:1], (3, X.shape[1]))
    if layout == "readonly":
        X = X.copy()
        X.setflags(write=False)
    return X


def reference_matrix(X: np.ndarray) -> np.ndarray | None:
    """X as scikit-learn's float32 sees it (float64 holding those values), or None when X
    is not numeric. Integer arrays: numpy's cast to float32 (what scikit-learn applies);
    Python ints: rounded once to float32; strings, None...: not numbers."""
    if X.dtype.kind in "biu":
        return X.astype(np.float32).astype(np.float64)
    if X.dtype.kind == "f":
        return X.astype(np.float64)
    if X.dtype.kind != "O":
        return None
    out = np.empty(X.shape, dtype=np.float64)
    for idx, v in np.ndenumerate(X):
        if isinstance(v, (bool, float)):
            out[idx] = float(v)
        elif isinstance(v, int):
            out[idx] = nearest_float32(v)
        else:
            return None
    return out


@FUZZ
@given(n=st.one_of(st.integers(-(2**64), 2**64), st.integers(-(2**130), 2**130)))
def test_nearest_float32_reference(n: int) -> None:
    """The reference agrees with numpy's int64 / uint64 cast, where that exists."""
    if -(2**63) <= n < 2**63:
        assert nearest_float32(n) == float(np.array(n, dtype=np.int64).astype(np.float32))
    if 0 <= n < 2**64:
        assert nearest_float32(n) == float(np.array(n, dtype=np.uint64).astype(np.float32))


@FUZZ
@given(data=st.data(), on_invalid=st.sampled_from(["raise", "nan"]))
def test_feature_arrays(data: Any, on_invalid: str, model: reco_fast.Model) -> None:
    n = model.n_features
    X = data.draw(feature_arrays(n))
    if X.ndim == 2 and X.shape[1] == n and not data.draw(st.integers(0, 3)):
        X = X[:, ::-1][:, ::-1]  # a non-contiguous view of the same values
    before = X.copy()
    shape_ok = X.ndim == 2 and X.shape[1] == n
    try:
        got = model.predict_proba_features(X, on_invalid=on_invalid)
    except Exception as exc:
        assert isinstance(exc, InputError), f"{type(exc).__name__}: {exc}"
        event("refused")
        clean = reference_matrix(X)
        if not shape_ok or clean is None:
            assert exc.field == "X", exc
            return
        bad = ~(np.abs(clean) <= FLOAT32_MAX)
        assert on_invalid == "raise" and bad.any(), f"refused: {exc}"
        r, c = np.argwhere(bad)[0]
        assert exc.rows == (r,) and exc.field == model.feature_names[c], exc
        assert str(exc).startswith(f"X[{r}, {c}] ({model.feature_names[c]!r}) ")
        return
    event(f"scored ({'some' if (~np.isfinite(got)).any() else 'no'} NaN rows)")
    np.testing.assert_array_equal(X, before)  # the input is never written
    assert shape_ok and X.dtype.kind in "biufO"
    clean = reference_matrix(X)
    assert clean is not None, "a matrix of non-numbers was scored"
    assert isinstance(got, np.ndarray) and got.shape == (X.shape[0],) and got.dtype == np.float64
    ok = (np.abs(clean) <= FLOAT32_MAX).all(axis=1)
    assert on_invalid == "nan" or ok.all()
    assert np.isnan(got[~ok]).all()
    expected = model.predict_proba_features(clean[ok].copy())
    assert got[ok].tolist() == expected.tolist()
    if ok.any():
        other = model.using("tl2cgen").predict_proba_features(clean[ok].copy())
        assert np.max(np.abs(got[ok] - other)) <= TOLERANCE


# ---- SessionTracker events -------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def mostly(
    usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any], odds: int = 4
) -> st.SearchStrategy[Any]:
    """``usual`` ``odds`` times out of ``odds + 1``, otherwise ``other``."""
    return st.integers(0, odds).flatmap(lambda i: other if i == 0 else usual)


def often(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return mostly(usual, other, odds=9)


@st.composite
def events(draw: Any, model: reco_fast.Model) -> tuple[str, dict[str, Any]]:
    builder = model.builder
    voc = builder.vocabulary
    products = builder.catalog.product_ids.tolist()
    sid = draw(often(st.sampled_from(["s1", "s2"]), anything))
    pid = draw(
        often(st.sampled_from(products[:5]), st.one_of(near_miss_label(products[:5]), anything))
    )
    ts = draw(often(st.none(), st.one_of(st.floats(1_000_000.0, 1_010_000.0), anything)))
    kind = draw(st.sampled_from(["page_view", "engagement", "add_to_cart", "remove_from_cart"]))
    if kind == "page_view":
        kwargs = {
            "device_type": draw(
                often(
                    st.sampled_from(voc.devices),
                    st.one_of(st.none(), near_miss_label(list(voc.devices)), anything),
                )
            ),
            "traffic_source": draw(
                often(st.sampled_from(voc.traffic_sources), st.one_of(st.none(), anything))
            ),
            "customer_id": draw(often(st.sampled_from([None, "c1"]), anything)),
            "ts": ts,
        }
        return kind, {"session_id": sid, "product_id": pid, **kwargs}
    if kind == "engagement":
        return kind, {
            "session_id": sid,
            "time_on_page_sec": draw(
                often(st.one_of(st.none(), valid_number("time_on_page_sec")), anything)
            ),
            "scroll_depth": draw(
                often(st.one_of(st.none(), valid_number("scroll_depth")), anything)
            ),
            "clicked_product_image": draw(
                often(st.sampled_from([None, 0, 1, True, False]), anything)
            ),
            "ts": ts,
        }
    return kind, {"session_id": sid, "product_id": pid, "ts": ts}


@FUZZ
@given(data=st.data())
def test_session_events(data: Any, model: reco_fast.Model) -> None:
    clock = FakeClock()
    tracker = reco_fast.SessionTracker(model, clock=clock)
    script = data.draw(st.lists(events(model), min_size=1, max_size=6))
    if data.draw(st.booleans()):
        devices, sources = (
            model.builder.vocabulary.devices,
            model.builder.vocabulary.traffic_sources,
        )
        start = {"product_id": model.builder.product_id_list[0], "device_type": devices[0]}
        script.insert(0, ("page_view", {"session_id": "s1", **start, "traffic_source": sources[0]}))
    for kind, kwargs in script:
        clock.now += data.draw(st.sampled_from([0.0, 1.5, 60.0, 4000.0]))
        sid = kwargs["session_id"]
        before = _context_or_none(tracker, sid)
        try:
            context = getattr(tracker, kind)(**kwargs)
        except Exception as exc:
            assert isinstance(exc, (InputError, TypeError)), f"{kind}: {type(exc).__name__}: {exc}"
            # (a TypeError is allowed: page_view looks an unhashable device_type or
            # traffic_source up in a set and says only "unhashable type: 'list'")
            if isinstance(exc, InputError):
                # named as the argument, or in the words of the message ("session 's1' ...")
                assert exc.field is not None and exc.field.removesuffix("_id") in str(exc), exc
            assert _context_or_none(tracker, sid) == before  # a refused event changes nothing
            event(f"{kind} refused")
            continue
        event(f"{kind} applied")
        # whatever the tracker accepted is a page view the model scores and ranks
        assert context == tracker.context(sid)
        # the context has no recommended product: score one against it
        page_view = {**context, "recommended_product_id": context["current_product_id"]}
        p = model.predict_proba(page_view)
        assert 0.0 <= p <= 1.0
        assert p == model.predict_proba([page_view])[0]
        recs = model.recommend(context, k=3, threshold=0.0)
        assert len(recs) == 3


def _context_or_none(tracker: reco_fast.SessionTracker, sid: Any) -> Any:
    try:
        return tracker.context(sid)
    except (InputError, TypeError):
        return None


# ---- recommend -------------------------------------------------------------------------


def _k_ok(k: Any) -> bool:
    return not isinstance(k, (bool, np.bool_)) and isinstance(k, (int, np.integer)) and k >= 0


def _threshold_ok(t: Any) -> bool:
    if t is None:
        return True
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.floating)):
        return False
    try:
        return 0.0 <= float(t) <= 1.0
    except OverflowError:
        return False


@FUZZ
@given(data=st.data())
def test_recommend(data: Any, model: reco_fast.Model, ref: Reference, base_sessions) -> None:
    builder = model.builder
    products = builder.catalog.product_ids.tolist()
    session = dict(data.draw(st.sampled_from(base_sessions)))
    k = data.draw(
        mostly(
            st.one_of(st.integers(0, 5), st.sampled_from([np.int64(2), np.uint8(1), 10**6])),
            st.one_of(st.sampled_from([True, -1, 2.0, 10**400, 2**64]), anything),
        )
    )
    threshold = data.draw(
        mostly(
            st.one_of(
                st.none(), st.floats(0.0, 0.6), st.sampled_from([0, 1, np.float32(0.25), -0.0])
            ),
            st.one_of(st.sampled_from([1.5, True, np.nan, -1e-300]), anything),
        )
    )
    candidates = data.draw(
        mostly(
            st.one_of(st.none(), st.lists(st.sampled_from(products), max_size=8)),
            st.one_of(
                st.lists(st.one_of(st.sampled_from(products), anything), max_size=3), anything
            ),
        )
    )
    exclude = data.draw(
        mostly(
            st.one_of(
                st.just(EXCLUDABLE),
                st.lists(st.sampled_from(EXCLUDABLE), max_size=2),
                st.sampled_from(["viewed", "in_cart", (), frozenset(EXCLUDABLE)]),
            ),
            st.one_of(st.sampled_from(["", "nothing", None, ["viewed", 3]]), anything),
        )
    )
    if data.draw(st.booleans()):
        session[CART_FIELD] = data.draw(
            mostly(st.lists(st.sampled_from(products), max_size=3), anything)
        )
    try:
        recs = model.recommend(
            session, k=k, threshold=threshold, candidates=candidates, exclude=exclude
        )
    except Exception as exc:
        assert isinstance(exc, (InputError, TypeError)), f"{type(exc).__name__}: {exc}"
        event(f"refused ({exc.field})")
        assert exc.field in {"k", "threshold", "candidates", "exclude", CART_FIELD}, exc
        assert exc.field in str(exc), exc
        if exc.field == "k":
            assert not _k_ok(k)
        elif exc.field == "threshold":
            assert not _threshold_ok(threshold)
        return
    assert _k_ok(k) and _threshold_ok(threshold)
    event(f"recommended {'some' if recs else 'none'}")
    t = model.threshold if threshold is None else float(threshold)
    # the reference: score every eligible candidate one page view at a time
    viewed = {
        session[f]
        for f in ("current_product_id", "prev_product_1", "prev_product_2", "prev_product_3")
    }
    cart = session.get(CART_FIELD) or []
    drop = set()
    excl = {exclude} if isinstance(exclude, str) else set(exclude)
    if "viewed" in excl:
        drop |= viewed
    if "in_cart" in excl:
        drop |= set(cart)
    pool = products if candidates is None else list(dict.fromkeys(candidates))
    pool = [p for p in pool if p not in drop]
    clean = ref.clean(session)
    scores = {p: model.predict_proba({**clean, "recommended_product_id": p}) for p in pool}
    eligible = [p for p in pool if scores[p] >= t]
    assert len(recs) == min(int(k), len(eligible))
    got = [r.product_id for r in recs]
    assert len(set(got)) == len(got) and set(got) <= set(eligible)
    for r in recs:
        assert abs(r.probability - scores[r.product_id]) <= TOLERANCE
        assert isinstance(r.reason, str) and r.reason
    probs = [r.probability for r in recs]
    assert probs == sorted(probs, reverse=True)
    rest = [scores[p] for p in eligible if p not in got]
    if recs and rest:
        assert min(probs) >= max(rest) - TOLERANCE


# ---- things that are not page views at all --------------------------------------------


@FUZZ
@given(value=anything, on_invalid=st.sampled_from(["raise", "nan"]))
def test_not_a_batch(value: Any, on_invalid: str, model: reco_fast.Model) -> None:
    """Any value that is not a page view or a batch: a TypeError, or an InputError (a
    list whose rows are not page views: naming the row), never anything else."""
    try:
        got = model.predict_proba(value, on_invalid=on_invalid)
    except (InputError, TypeError) as exc:
        if isinstance(value, list) and value and isinstance(exc, InputError) and exc.rows:
            assert "row" in str(exc)
        event(type(exc).__name__)
        return
    # only an empty batch, or (on_invalid="nan") a mapping, which is one invalid page
    # view, can come back
    assert on_invalid == "nan" or (isinstance(value, (list, tuple)) and not value), (value, got)
    if isinstance(got, np.ndarray):
        assert np.isnan(got).all()
    else:
        assert math.isnan(got)
