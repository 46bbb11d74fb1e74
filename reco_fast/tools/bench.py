"""Measure an artifact the way a service calls it, and check latency gates.

What ``reco-fast bench ARTIFACT`` runs, so a deploy pipeline can refuse a model
that is slower than it should be on the machine that will serve it. Serving
dependencies only (numpy and the standard library): every call is timed on its
own with ``time.perf_counter_ns`` after a warm-up, and each case reports the
median (p50) and the 99th percentile (p99) of those calls.

Cases (one thread unless stated):

- ``single``: ``model.predict_proba(session_dict)``, one raw page view to a probability;
- ``batch-N``: ``model.predict_proba_features(X)`` on N feature rows, in ns per row;
- ``batch-N-tT``: the largest batch split over T threads (``n_threads=T``);
- ``recommend``: ``model.recommend(session, k=3)`` over the whole catalog;
- ``event+recommend``: one ``SessionTracker`` event (page views and engagement,
  alternating, in-memory store) followed by ``tracker.recommend(sid, k=3)``;
- with ``catalog_sizes`` (``--catalog-sizes``), for a synthetic catalog of each size
  (:func:`synthetic_catalog`): ``with_catalog@N`` (seconds to attach it, and the bytes
  per product the model then holds), ``recommend@N`` (top-10 at threshold 0, the
  whole-catalog path: threshold cells above 2,048 products), ``recommend@N-all``
  (the same answer from today's per-product kernel: every product scored),
  ``update@N`` (``with_catalog_update`` of one price, index rebuilt) and
  ``event+recommend@N``.

The session is synthetic but valid: products, categories and prices come from
the artifact's own catalog, labels from its vocabulary. Batch rows are the
features of random sessions drawn the same way.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reco_fast.errors import InputError

if TYPE_CHECKING:
    from reco_fast.serve.model import Model

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "GATES",
    "BenchReport",
    "Case",
    "Gate",
    "GateResult",
    "catalog_cases",
    "check",
    "feature_rows",
    "format_table",
    "machine_info",
    "percentiles",
    "run",
    "sample_session",
    "synthetic_catalog",
    "time_calls",
    "to_json",
    "tracker_workload",
    "usable_cores",
]

DEFAULT_BATCH_SIZES = (1, 10, 100, 1000, 100_000)
DEFAULT_CATALOG_SIZES = (250, 10_000, 100_000, 1_000_000)
CATALOG_K = 10
"""Top-k of the catalog-size cases (the issue's figure: top-10)."""
PER_PRODUCT_BUDGET = 2_000_000
"""Products scored per case by the per-product kernel: its rounds are this over N
(at least MIN_BATCH_ROUNDS), so a million-product case takes seconds, not minutes."""
DEFAULT_ROUNDS = 2000
ROWS_PER_ROUND = 1000
"""A batch of N rows gets ``rounds * ROWS_PER_ROUND // N`` rounds (at least MIN_BATCH_ROUNDS)."""
MIN_BATCH_ROUNDS = 5
DISTINCT_ROWS = 8192
"""Distinct feature rows behind a batch; larger batches repeat them."""


# ---- timing --------------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], rounds: int, warmup: int = 0) -> np.ndarray:
    """Wall time of each of ``rounds`` calls of ``fn()``, in ns, after ``warmup`` calls."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    out = np.empty(rounds, dtype=np.int64)
    gc.collect()
    for i in range(rounds):
        start = clock()
        fn()
        out[i] = clock() - start
    return out


def percentiles(samples: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(p50, p99) of the samples, numpy's default (linear) interpolation."""
    p50, p99 = np.percentile(np.asarray(samples, dtype=np.float64), [50, 99])
    return float(p50), float(p99)


# ---- inputs --------------------------------------------------------------------------------
def sample_session(model: Model) -> dict[str, Any]:
    """One valid page view built from the artifact's catalog and vocabulary.

    An engaged shopper on a mid-priced product with three previous views and an
    item in the cart: the shape of session a recommendation widget sees.
    """
    builder = model.builder
    voc = builder.vocabulary
    session: dict[str, Any] = {
        "session_id": "bench-session",
        "customer_id": "bench-customer",
        "products_in_cart": 1,
        "device_type": voc.devices[0],
        "traffic_source": voc.traffic_sources[0],
        "time_on_page_sec": 75.0,
        "scroll_depth": 0.7,
        "clicked_product_image": 1,
        "session_length_mins": 12.5,
        "products_viewed_count": 4,
    }
    catalog = builder.catalog
    if catalog is None:
        session["current_category"] = voc.categories[0]
        session["current_price"] = 49.99
        return session
    ids = catalog.product_ids.tolist()
    prices = catalog.prices.tolist()
    cats = catalog.categories.tolist()
    # a mid-priced product as the current one, the first others (by id) as the history
    cur = int(np.argsort(catalog.prices, kind="stable")[len(ids) // 2])
    others = [i for i in range(len(ids)) if i != cur]
    prev = others[:3] + [-1] * (3 - len(others[:3]))
    session.update(
        current_product_id=ids[cur],
        current_category=cats[cur],
        current_price=float(prices[cur]),
        prev_product_1=ids[prev[0]] if prev[0] >= 0 else "NONE",
        prev_product_2=ids[prev[1]] if prev[1] >= 0 else "NONE",
        prev_product_3=ids[prev[2]] if prev[2] >= 0 else "NONE",
        recommended_product_id=ids[others[3 % len(others)]] if others else ids[cur],
    )
    return session


def feature_rows(model: Model, n: int, seed: int = 0) -> np.ndarray:
    """An (n, n_features) float64 matrix: features of random valid sessions.

    Models compiled from a bare matrix (no session schema) get uniform values.
    At most ``DISTINCT_ROWS`` distinct rows, repeated to n.
    """
    rng = np.random.default_rng(seed)
    m = max(1, min(n, DISTINCT_ROWS))
    try:
        builder = model.builder
    except InputError:  # a bare-matrix model: no schema to draw sessions from
        X = rng.uniform(0.0, 100.0, size=(m, model.n_features))
        return np.ascontiguousarray(np.resize(X, (n, model.n_features)))
    voc = builder.vocabulary
    cols: dict[str, Any] = {
        "device_type": rng.choice(np.asarray(voc.devices), m),
        "traffic_source": rng.choice(np.asarray(voc.traffic_sources), m),
        "products_in_cart": rng.integers(0, 5, m).astype(np.float64),
        "time_on_page_sec": np.round(rng.exponential(60.0, m), 1),
        "scroll_depth": np.round(rng.uniform(0.0, 1.0, m), 2),
        "clicked_product_image": rng.integers(0, 2, m).astype(np.float64),
        "session_length_mins": np.round(rng.exponential(8.0, m), 1),
        "products_viewed_count": rng.integers(1, 15, m).astype(np.float64),
    }
    catalog = builder.catalog
    if catalog is None:
        cols["current_category"] = rng.choice(np.asarray(voc.categories), m)
        cols["current_price"] = np.round(rng.uniform(5.0, 300.0, m), 2)
    else:
        ids = catalog.product_ids
        cur = rng.integers(0, len(ids), m)
        cols["current_product_id"] = ids[cur]
        cols["current_category"] = catalog.categories[cur]
        cols["current_price"] = catalog.prices[cur]
        for k in (1, 2, 3):
            cols[f"prev_product_{k}"] = ids[rng.integers(0, len(ids), m)]
        cols["recommended_product_id"] = ids[rng.integers(0, len(ids), m)]
    X = builder.transform(cols)
    return np.ascontiguousarray(np.resize(X, (n, X.shape[1])))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """The machine and software a measurement belongs to."""
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def tracker_workload(
    tracker: Any, session: Mapping[str, Any], product_ids: Sequence[str], k: int = 3
) -> Callable[[], Any]:
    """Start a tracked session like ``session``; return one "event, then recommend" step.

    Steps alternate an engagement update and a page view of the next catalog
    product, each followed by ``tracker.recommend(sid, k)``, on an in-memory store.
    """
    ids = list(product_ids)
    sid = "bench-tracked"
    tracker.page_view(
        sid,
        session["current_product_id"],
        device_type=session["device_type"],
        traffic_source=session["traffic_source"],
    )
    tracker.add_to_cart(sid, ids[0])
    counter = itertools.count(1)

    def event_and_recommend() -> Any:
        i = next(counter)
        if i % 2:
            tracker.engagement(sid, time_on_page_sec=float(i % 600), scroll_depth=(i % 100) / 100.0)
        else:
            tracker.page_view(sid, ids[i % len(ids)])
        return tracker.recommend(sid, k)

    return event_and_recommend


def synthetic_catalog(model: Model, n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` products for ``model``: ids ``P0000000``..., categories drawn uniformly from its
    vocabulary, prices log-normal around $55 (sd 1 in log), rounded to cents: the shape
    of a real price list (many shared price points), as columns for ``with_catalog``."""
    rng = np.random.default_rng(seed)
    names = np.asarray(model.builder.vocabulary.categories, dtype=object)
    return {
        "product_id": np.array([f"P{i:07d}" for i in range(n)], dtype=object),
        "category": names[rng.integers(0, len(names), n)],
        "price": np.round(np.exp(rng.normal(4.0, 1.0, n)), 2),
    }


def catalog_cases(
    model: Model,
    sizes: Iterable[int],
    *,
    rounds: int,
    progress: Callable[[str], None] | None = None,
) -> list[Case]:
    """The catalog-size cases (see the module docstring) for each size, smallest first."""
    from reco_fast.serve.session import SessionTracker

    say = progress or (lambda _msg: None)
    cases: list[Case] = []
    for n in sorted({int(v) for v in sizes}):
        say(f"catalog of {n:,} products")
        columns = synthetic_catalog(model, n)
        start = time.perf_counter()
        sized = model.with_catalog(columns)
        seconds = time.perf_counter() - start
        per_product = sized.catalog_nbytes / n
        cases.append(
            Case(
                f"with_catalog@{n}",
                f"with_catalog, {n:,} products",
                "s",
                seconds,
                seconds,
                1,
                note=f"{per_product:.1f} bytes/product held",
            )
        )
        one = str(sized.builder.required_catalog.product_ids[n // 2])
        start = time.perf_counter()
        sized.with_catalog_update(prices={one: 12.34})
        seconds = time.perf_counter() - start
        cases.append(
            Case(
                f"update@{n}",
                f"with_catalog_update, one price, {n:,} products",
                "s",
                seconds,
                seconds,
                1,
            )
        )
        session = sample_session(sized)
        warmup = max(5, rounds // 10)
        got = sized.recommend(session, k=CATALOG_K, threshold=0.0)
        fast_call = functools.partial(sized.recommend, session, k=CATALOG_K, threshold=0.0)
        samples = time_calls(fast_call, rounds, warmup)
        path = "threshold cells" if sized.uses_cells else "every product scored"
        cases.append(
            _case(
                f"recommend@{n}", f"recommend top-{CATALOG_K}, {n:,} products", samples, note=path
            )
        )
        every = sized._scoring_every_product()
        assert [(r.product_id, r.probability) for r in got] == [
            (r.product_id, r.probability)
            for r in every.recommend(session, k=CATALOG_K, threshold=0.0)
        ], "the whole-catalog path and the per-product kernel disagree"
        n_rounds = max(MIN_BATCH_ROUNDS, min(rounds, PER_PRODUCT_BUDGET // n))
        every_call = functools.partial(every.recommend, session, k=CATALOG_K, threshold=0.0)
        samples = time_calls(every_call, n_rounds, 2)
        p50 = float(np.percentile(samples, 50))
        cases.append(
            _case(
                f"recommend@{n}-all",
                f"recommend top-{CATALOG_K}, {n:,} products, per-product kernel",
                samples,
                note=f"{p50 / n:.0f} ns/product",
            )
        )
        step = tracker_workload(
            SessionTracker(sized),
            session,
            sized.builder.required_catalog.product_ids[:1000].tolist(),
            CATALOG_K,
        )
        samples = time_calls(step, rounds, warmup)
        cases.append(
            _case(
                f"event+recommend@{n}",
                f"tracker event + recommend(k={CATALOG_K}), {n:,} products",
                samples,
                note="in memory",
            )
        )
    return cases


# ---- the cases -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One measured case: per-call percentiles, in ``unit`` (us per call or ns per row)."""

    key: str
    name: str
    unit: str
    p50: float
    p99: float
    rounds: int
    rows: int = 1
    threads: int = 1
    note: str = ""


@dataclass(frozen=True)
class BenchReport:
    artifact: str
    backend: str
    machine: dict[str, Any]
    cases: tuple[Case, ...]
    seconds: float = 0.0

    def case(self, key: str) -> Case | None:
        return next((c for c in self.cases if c.key == key), None)

    @property
    def largest_batch(self) -> Case | None:
        """The single-thread batch case with the most rows."""
        batches = [c for c in self.cases if c.key.startswith("batch-") and c.threads == 1]
        return max(batches, key=lambda c: c.rows, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "machine": self.machine,
            "seconds": self.seconds,
            "cases": [asdict(c) for c in self.cases],
        }


def _case(
    key: str, name: str, samples: np.ndarray, *, rows: int = 1, threads: int = 1, note: str = ""
) -> Case:
    if rows == 1 and not key.startswith("batch-"):
        p50, p99 = percentiles(samples / 1e3)
        return Case(key, name, "us", p50, p99, len(samples), 1, threads, note)
    p50, p99 = percentiles(samples / rows)
    return Case(key, name, "ns/row", p50, p99, len(samples), rows, threads, note)


def run(
    model: Model,
    *,
    rounds: int = DEFAULT_ROUNDS,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    k: int = 3,
    catalog_sizes: Iterable[int] = (),
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure every case the model supports; ``rounds`` calls per latency case.

    ``threads``: also score the largest batch with ``n_threads=threads``
    (default: the usable cores, when there are more than one; 0 or 1: skip).
    ``catalog_sizes``: also the catalog-size cases (:func:`catalog_cases`) of a
    ``ranking`` model.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    sizes = sorted({int(n) for n in batch_sizes})
    if any(n < 1 for n in sizes):
        raise ValueError(f"batch sizes must be >= 1, got {sizes}")
    if threads is None:
        threads = usable_cores()
    start = time.perf_counter()
    warmup = max(5, rounds // 10)
    say = progress or (lambda _msg: None)
    cases: list[Case] = []

    try:
        builder = model.builder
    except InputError:  # a bare-matrix model: feature batches only
        builder = None

    if builder is not None:
        session = sample_session(model)
        say("single session")
        samples = time_calls(lambda: model.predict_proba(session), rounds, warmup)
        cases.append(_case("single", "predict_proba(session dict)", samples))

    if sizes:
        X_all = feature_rows(model, sizes[-1])
        for n in sizes:
            X = np.ascontiguousarray(X_all[:n])
            n_rounds = max(MIN_BATCH_ROUNDS, min(rounds, rounds * ROWS_PER_ROUND // n))
            say(f"batch of {n}")
            samples = time_calls(
                functools.partial(model.predict_proba_features, X),
                n_rounds,
                max(2, n_rounds // 10),
            )
            cases.append(_case(f"batch-{n}", f"predict_proba_features, {n} rows", samples, rows=n))
        n = sizes[-1]
        if threads > 1 and n >= 2 * 4096:
            n_rounds = max(MIN_BATCH_ROUNDS, min(rounds, rounds * ROWS_PER_ROUND // n))
            say(f"batch of {n} on {threads} threads")
            samples = time_calls(
                lambda: model.predict_proba_features(X_all, n_threads=threads),
                n_rounds,
                max(2, n_rounds // 10),
            )
            cases.append(
                _case(
                    f"batch-{n}-t{threads}",
                    f"predict_proba_features, {n} rows, n_threads={threads}",
                    samples,
                    rows=n,
                    threads=threads,
                )
            )

    if builder is not None and builder.ranks_products and builder.catalog is not None:
        from reco_fast.serve.session import SessionTracker

        n_products = len(builder.catalog)
        say("recommend")
        got = model.recommend(session, k=k)
        samples = time_calls(lambda: model.recommend(session, k=k), rounds, warmup)
        cases.append(
            _case(
                "recommend",
                f"recommend(session, k={k}), {n_products} products",
                samples,
                note=f"{len(got)} returned at threshold {model.threshold:g}",
            )
        )

        say("event + recommend")
        event_and_recommend = tracker_workload(
            SessionTracker(model), session, builder.catalog.product_ids.tolist(), k
        )
        samples = time_calls(event_and_recommend, rounds, warmup)
        cases.append(
            _case(
                "event+recommend",
                f"tracker event + recommend(k={k}), in memory",
                samples,
                note="page_view and engagement alternating",
            )
        )

        sizes_wanted = list(catalog_sizes)
        if sizes_wanted:
            cases.extend(catalog_cases(model, sizes_wanted, rounds=rounds, progress=say))

    return BenchReport(
        str(model.path), model.backend, machine_info(), tuple(cases), time.perf_counter() - start
    )


# ---- gates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """A limit on one statistic of one case; ``key`` None means the largest 1-thread batch."""

    option: str
    key: str | None
    stat: str
    unit: str
    help: str


GATES: tuple[Gate, ...] = (
    Gate("max_p50_us", "single", "p50", "us", "single page view predict_proba(dict), median"),
    Gate("max_p99_us", "single", "p99", "us", "single page view predict_proba(dict), p99"),
    Gate("max_batch_ns", None, "p50", "ns/row", "largest one-thread batch, median ns per row"),
    Gate("max_recommend_us", "recommend", "p50", "us", "whole-catalog recommend(k=3), median"),
    Gate("max_event_us", "event+recommend", "p50", "us", "tracker event + recommend, median"),
)


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    limit: float
    measured: float | None
    case: str | None

    @property
    def passed(self) -> bool:
        return self.measured is not None and self.measured <= self.limit

    def describe(self) -> str:
        what = f"{self.gate.option.replace('_', '-')} {self.limit:g}"
        if self.measured is None:
            return f"FAIL {what}: not measured for this artifact"
        verdict = "ok  " if self.passed else "FAIL"
        return (
            f"{verdict} {what}: {self.case} {self.gate.stat} = {self.measured:.4g} "
            f"{self.gate.unit} (limit {self.limit:g} {self.gate.unit})"
        )


def check(report: BenchReport, limits: Mapping[str, float | None]) -> list[GateResult]:
    """Evaluate the gates whose limits are given (by option name, e.g. "max_p50_us")."""
    unknown = set(limits) - {g.option for g in GATES}
    if unknown:
        raise ValueError(
            f"unknown gate(s) {sorted(unknown)}; choose from {[g.option for g in GATES]}"
        )
    results = []
    for gate in GATES:
        limit = limits.get(gate.option)
        if limit is None:
            continue
        case = report.largest_batch if gate.key is None else report.case(gate.key)
        measured = None if case is None else getattr(case, gate.stat)
        results.append(GateResult(gate, float(limit), measured, None if case is None else case.key))
    return results


# ---- output --------------------------------------------------------------------------------
def catalog_table(report: BenchReport) -> str:
    """The catalog-size cases as a Markdown table (the README's), from one run."""
    sizes = sorted(
        {int(c.key.split("@")[1]) for c in report.cases if c.key.startswith("with_catalog@")}
    )
    lines = [
        "| products | recommend p50 (p99), µs | per-product kernel p50, µs | per product, ns "
        "| event + recommend p50, µs | with_catalog, s | bytes/product | one-price update, s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        fast, every = report.case(f"recommend@{n}"), report.case(f"recommend@{n}-all")
        event, attach = report.case(f"event+recommend@{n}"), report.case(f"with_catalog@{n}")
        update = report.case(f"update@{n}")
        assert fast and every and event and attach and update
        lines.append(
            f"| {n:,} | {_fmt(fast.p50)} ({_fmt(fast.p99)}) | {_fmt(every.p50)} "
            f"| {every.p50 * 1000 / n:.0f} | {_fmt(event.p50)} | {attach.p50:.2f} "
            f"| {attach.note.split()[0]} | {update.p50:.3f} |"
        )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def format_table(report: BenchReport, results: Sequence[GateResult] = ()) -> str:
    m = report.machine
    lines = [
        f"reco-fast bench {report.artifact}",
        f"backend {report.backend}; {m['cpu']}, {m['usable_cores']} usable of "
        f"{m['logical_cpus']} CPUs; Python {m['python']}, numpy {m['numpy']}",
        "",
    ]
    header = ("case", "threads", "rounds", "p50", "p99", "unit", "")
    rows = [
        (c.key, str(c.threads), str(c.rounds), _fmt(c.p50), _fmt(c.p99), c.unit, c.note)
        for c in report.cases
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    align = ("<", ">", ">", ">", ">", "<", "<")
    for r in (header, *rows):
        cells = [f"{v:{a}{w}}" for v, a, w in zip(r, align, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"({report.seconds:.1f} s)")
    if results:
        lines.append("")
        lines.append("gates:")
        lines.extend(f"  {r.describe()}" for r in results)
        failed = sum(not r.passed for r in results)
        lines.append(
            f"{failed} of {len(results)} gates failed"
            if failed
            else f"all {len(results)} gates pass"
        )
    return "\n".join(lines)


def to_json(report: BenchReport, results: Sequence[GateResult] = ()) -> str:
    data = report.to_dict()
    data["gates"] = [
        {
            "gate": r.gate.option,
            "case": r.case,
            "stat": r.gate.stat,
            "unit": r.gate.unit,
            "limit": r.limit,
            "measured": r.measured,
            "passed": r.passed,
        }
        for r in results
    ]
    data["passed"] = all(r.passed for r in results)
    return json.dumps(data, indent=2)
