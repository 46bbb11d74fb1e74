"""A simulated shop that closes the loop: serve, log, retrain, A/B test, evaluate off-policy.

Build side (pandas, scikit-learn for the retrain). ``reco-fast simulate --days N --out DIR``.

The shoppers
------------
Page views come from the default data generator (:mod:`reco_fast.build.generate`,
seed 42, so its catalog is the default build's) and clicks from the
generator's own latent click model, evaluated for whichever product is shown
(:class:`ShopperModel`)::

    P(click | page view i, product j, position p)
        = examine(p) * sigmoid(softcap(session_i + a[device_i] + b[traffic_i])
                               + relation(i, j) + customer_i)

``session``, ``relation``, ``softcap`` and the weights are the generator's
(``_generate._W``); the device/traffic offsets ``a``/``b`` are solved by the
generator's own calibration (``_calibrate_offsets``) on the generated page views
with freshly drawn noise, so the click rate of the generator's own
recommendations matches its targets (43.8 % overall); the customer effects are
drawn once per customer. ``examine(p) = (1 + p) ** -examination_decay`` is the
one thing the generator does not have (it shows one product per page view):
position bias, 1 for the first slot, 0.62 for the second, 0.46 for the third
with the default decay 0.7.

The loop
--------
* **Day 0**: every request is served by the initial model (the default build's
  artifact unless ``initial`` is given) through softmax exploration
  (:class:`~reco_fast.serve.policies.SoftmaxSampling`, top ``top_m``), and logged.
* **Retrain** (:func:`reco_fast.build.retrain.retrain`) on day 0's impressions of the
  sessions outside a hash-chosen ``holdout`` share: shown-and-clicked against
  shown-and-not-clicked, position as a feature fixed at 0.
* **Off-policy estimate** (:mod:`reco_fast.build.offpolicy`) of the retrained model's
  CTR from day 0's held-out impressions (IPS, normal 95% interval).
* **Days 1..N-1**: an :class:`~reco_fast.serve.ab.ABRouter` serves ``initial`` and
  ``retrained`` to a 50/50 hash split of sessions, greedily (each model's own top k).

Every request shows ``k`` products (threshold 0 by default: the models rank,
the shoppers decide). ``DIR/simulation.json``::

    {"days": [{"day": 0, "variants": {"initial": {"requests", "impressions",
               "clicks", "ctr", "ctr_ci", "coverage", "expected_ctr"}}}, ...],
     "off_policy": {"estimate", "ci", "truth", "truth_ci", "truth_expected",
                    "truth_on_logged_sessions", "covers_truth", "snips", ...},
     "models": {...}, "config": {...}}

``truth`` is the retrained model's CTR measured on days 1+ (clicks / shown
slots); ``truth_expected`` the mean click probability of what it showed there
(the same quantity without the coin flips); ``truth_on_logged_sessions`` its
expected CTR on exactly the held-out day-0 page views the estimate used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.build.offpolicy import estimate, model_ranker
from reco_fast.features.schema import LABEL, LOG_COLUMNS
from reco_fast.serve.ab import ABRouter, bucket, variant_stats, wilson_interval
from reco_fast.serve.impressions import (
    ImpressionLog,
    JsonlSink,
    LoggedImpression,
    LoggedRecommender,
    load_joined,
)
from reco_fast.serve.policies import SoftmaxSampling
from reco_fast.serve.rerank import Reranker

__all__ = ["ShopperModel", "format_simulation", "simulate"]

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400.0
START_TS = 1_700_000_000.0  # simulated time of day 0, 00:00 (fixed: reproducible logs)
HOLDOUT_SALT = "reco_fast-offpolicy-holdout:"
SIMULATION_FILE = "simulation.json"
DEFAULT_INITIAL_ROWS = 1000
"""The default initial model is the default build on the first 1,000 generated page views
(a young shop): the default build on all 15,000 is within 2 % of the best possible
ranking under this click model, which leaves a retrained model nothing measurable to gain."""
SESSION_FIELDS = tuple(
    c for c in LOG_COLUMNS if c not in ("session_id", "recommended_product_id", LABEL)
)
"""A logged page view's session, as the schema orders it (no id, product or label)."""


class ShopperModel:
    """The default generator's click model, for any product shown at any position.

    Parameters
    ----------
    frame, catalog : DataFrame
        ``reco_fast.build.generate.generate``'s page views and catalog.
    seed : int
        Seeds the customer effects and the calibration noise.
    examination_decay : float >= 0
        Position bias: ``examine(p) = (1 + p) ** -examination_decay``.
    """

    def __init__(self, frame: Any, catalog: Any, seed: int = 0, examination_decay: float = 0.7):
        from reco_fast.build import generate as g

        if not examination_decay >= 0:
            raise ValueError(f"examination_decay must be >= 0, got {examination_decay!r}")
        self.examination_decay = float(examination_decay)
        rng = np.random.default_rng(seed)
        self.frame = frame.reset_index(drop=True)
        self.product_ids = catalog["product_id"].to_numpy(dtype=object)
        self._index = {p: i for i, p in enumerate(self.product_ids.tolist())}
        cats = {c: i for i, c in enumerate(g.CATEGORIES)}
        self.prod_cat = catalog["category"].map(cats).to_numpy(dtype=np.int64)
        self.prod_price = catalog["price"].to_numpy(dtype=np.float64)
        f = self.frame
        n = len(f)
        self.cur = np.array([self._index[p] for p in f["current_product_id"]], dtype=np.int64)
        self.cur_cat = self.prod_cat[self.cur]
        self.cur_price = f["current_price"].to_numpy(dtype=np.float64)
        prev = np.full((n, 3), -1, dtype=np.int64)
        for m in range(3):
            col = f[f"prev_product_{m + 1}"].tolist()
            prev[:, m] = [self._index.get(p, -1) for p in col]
        self.prev = prev
        self.present = prev >= 0
        devices = {d: i for i, d in enumerate(g.DEVICES)}
        traffic = {t: i for i, t in enumerate(g.TRAFFIC_SOURCES)}
        device = f["device_type"].map(devices).to_numpy(dtype=np.int64)
        source = f["traffic_source"].map(traffic).to_numpy(dtype=np.int64)
        w = g._W
        t = f["time_on_page_sec"].to_numpy(dtype=np.float64)
        scroll = f["scroll_depth"].to_numpy(dtype=np.float64)
        length = f["session_length_mins"].to_numpy(dtype=np.float64)
        engagement = np.clip(t / 300.0 * scroll, 0, 1)
        session = (
            w["engagement"] * (1.0 - np.exp(-engagement / w["engagement_scale"]))
            + w["time"] * np.minimum(t, 300) / 300.0
            + w["log_price"] * np.log(self.cur_price / 60.0)
            + w["scroll"] * (scroll - 0.5)
            + w["session_len"] * (np.log1p(length) - 2.0)
            + w["cart"] * f["products_in_cart"].to_numpy(dtype=np.float64)
            + w["image"] * f["clicked_product_image"].to_numpy(dtype=np.float64)
            + g._CATEGORY_EFFECT[self.cur_cat]
        )
        customers = f["customer_id"].astype(str).to_numpy()
        uniq, inverse = np.unique(customers, return_inverse=True)
        self.customer = rng.normal(0.0, w["customer_sd"], size=len(uniq))[inverse]
        # the generator's calibration, on these page views and their own recommendations
        rec = np.array([self._index[p] for p in f["recommended_product_id"]], dtype=np.int64)
        self.own_relation = self._relation(np.arange(n), rec)
        hidden = self.own_relation + self.customer + rng.logistic(size=n)
        threshold = g._softcap_inverse(-hidden, w["session_cap"], w["cap_sharpness"])
        a, b = g._calibrate_offsets(session, threshold, device, source)
        x = session + a[device] + b[source]
        cap, k = w["session_cap"], w["cap_sharpness"]
        self.base = cap - np.logaddexp(0.0, k * (cap - x)) / k + self.customer  # softcap + customer
        self.offsets = (a, b)
        self._records: list[dict[str, Any]] | None = None

    @classmethod
    def generate(
        cls, n_rows: int, seed: int | None = None, click_seed: int = 0, **kwargs: Any
    ) -> ShopperModel:
        """Page views from ``generate(n_rows, seed=seed)`` (default: the build's
        ``DEFAULT_SEED``, the default catalog). Imported lazily: the CLI's parser imports
        this module, and ``reco-fast score`` must work without pandas."""
        from reco_fast.build.data import DEFAULT_SEED
        from reco_fast.build.generate import generate

        seed = DEFAULT_SEED if seed is None else seed
        frame, catalog = generate(n_rows=n_rows, seed=seed)
        return cls(frame, catalog, click_seed, **kwargs)

    def __len__(self) -> int:
        return len(self.frame)

    def _relation(self, rows: np.ndarray, products: np.ndarray) -> np.ndarray:
        from reco_fast.build.generate import _W as w

        rec_cat = self.prod_cat[products]
        same = rec_cat == self.cur_cat[rows]
        prev = self.prev[rows]
        present = self.present[rows]
        prev_cat = ((self.prod_cat[np.maximum(prev, 0)] == rec_cat[:, None]) & present).any(
            axis=1
        ) & ~same
        viewed = (products == self.cur[rows]) | (prev == products[:, None]).any(axis=1)
        log_ratio = np.log(self.prod_price[products] / np.maximum(self.cur_price[rows], 0.01))
        return (
            w["rec_same_cat"] * same
            + w["rec_prev_cat"] * prev_cat
            + w["rec_pricier"] * np.maximum(log_ratio, 0)
            + w["rec_cheaper"] * np.maximum(-log_ratio, 0)
            + w["rec_viewed"] * viewed
        )

    def attraction(self, row: int, product_ids: Sequence[str]) -> np.ndarray:
        """P(click | page view ``row``, product) for a product shown in the first slot."""
        products = np.fromiter((self._index[p] for p in product_ids), dtype=np.int64)
        rows = np.full(len(products), row, dtype=np.int64)
        z = self.base[rows] + self._relation(rows, products)
        return 1.0 / (1.0 + np.exp(-z))

    def examine(self, positions: Any) -> np.ndarray:
        """Probability that a shopper looks at the slot at each 0-based position."""
        return (1.0 + np.asarray(positions, dtype=np.float64)) ** -self.examination_decay

    def click_probability(self, row: int, product_ids: Sequence[str]) -> np.ndarray:
        """P(click) of each product when shown in this order (position 0 first)."""
        return self.attraction(row, product_ids) * self.examine(np.arange(len(product_ids)))

    def own_click_probability(self) -> np.ndarray:
        """P(click) of each page view's own generated recommendation (one slot, position 0)."""
        return 1.0 / (1.0 + np.exp(-(self.base + self.own_relation)))

    def session(self, row: int, session_id: str) -> dict[str, Any]:
        """The page view as a session dict in the seed's schema (plain Python values)."""
        if self._records is None:
            columns = {f: self.frame[f].tolist() for f in SESSION_FIELDS}  # plain Python values
            self._records = [
                dict(zip(columns, v, strict=True)) for v in zip(*columns.values(), strict=True)
            ]
        return {**self._records[row], "session_id": session_id}

    def check_catalog(self, model: Any) -> None:
        """Refuse a model whose catalog is not the generator's (its products would not match)."""
        catalog = model.builder.catalog
        ids = catalog.product_ids.tolist() if catalog is not None else []
        same = ids == self.product_ids.tolist() and np.array_equal(
            np.asarray(catalog.prices, dtype=np.float64), self.prod_price
        )
        if not same:
            raise ValueError(
                f"the model at {model.path} was not built on the default generated data "
                "(seed 42): the simulated shop needs its catalog"
            )


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class _Day:
    """Expected clicks per variant of one simulated day (the shoppers' probabilities)."""

    def __init__(self) -> None:
        self.expected: dict[str, float] = {}
        self.slots: dict[str, int] = {}

    def add(self, variant: str, p: np.ndarray) -> None:
        self.expected[variant] = self.expected.get(variant, 0.0) + float(p.sum())
        self.slots[variant] = self.slots.get(variant, 0) + len(p)


def _serve(
    serve: Any,
    shop: ShopperModel,
    rows: range,
    day: int,
    k: int,
    threshold: float,
    rng: np.random.Generator,
    tally: _Day,
) -> None:
    n = len(rows)
    for j, row in enumerate(rows):
        sid = f"d{day}-{row:06d}"
        ts = START_TS + day * DAY_SECONDS + j * DAY_SECONDS / n
        shown = serve.recommend(shop.session(row, sid), k, threshold, ts=ts)
        if not shown:
            tally.add(shown.variant, np.zeros(0))
            continue
        ids = [r.product_id for r in shown]
        p = shop.click_probability(row, ids)
        tally.add(shown.variant, p)
        for pid, clicked in zip(ids, rng.random(len(p)) < p, strict=True):
            if clicked:
                serve.click(sid, pid, ts=ts + 1.0)


def _expected_ctr(
    model: Any, shop: ShopperModel, imps: Sequence[LoggedImpression], k: int, threshold: float
) -> float:
    total = slots = 0.0
    for imp in imps:
        row = int(imp.record["session_id"].split("-")[1])
        ids = [r.product_id for r in model.recommend(imp.record["session"], k, threshold)]
        total += float(shop.click_probability(row, ids).sum())
        slots += len(ids)
    return total / slots if slots else math.nan


def simulate(
    out: str | os.PathLike[str],
    *,
    days: int = 2,
    requests_per_day: int = 10_000,
    initial: Any = None,
    initial_rows: int | None = DEFAULT_INITIAL_ROWS,
    base_log: Any = None,
    k: int = 3,
    threshold: float = 0.0,
    temperature: float = 1.0,
    top_m: int = 10,
    holdout: float = 0.3,
    seed: int = 0,
    examination_decay: float = 0.7,
    retrain_params: dict[str, Any] | None = None,
    rerank: bool = True,
) -> dict[str, Any]:
    """Run the simulated shop (see the module docstring); write and return ``simulation.json``.

    Parameters
    ----------
    out : path
        Output directory: ``impressions/`` (the log), ``models/`` (artifacts),
        ``simulation.json``.
    days : int >= 2
        Day 0 (initial model, exploring) and ``days - 1`` A/B days.
    requests_per_day : int
        Page views served per day (each one new session).
    initial : Model, artifact path or None
        The day-0 model; None builds one into ``out/models/initial`` with the default
        build on the first ``initial_rows`` page views of the default data (None: all).
    initial_rows : int or None
        See ``initial``; these page views are also the retraining's ``base_log``.
    base_log : DataFrame, optional
        With ``initial`` given: the page views it was trained on, for the
        retraining (:func:`reco_fast.build.retrain.retrain`); None retrains on the
        impressions alone.
    k, threshold : int, float
        Products per request and the recommend threshold.
    temperature, top_m : float, int
        Day 0's softmax exploration.
    holdout : float in (0, 1)
        Share of day-0 sessions (by hash) kept out of the retraining for the
        off-policy estimate.
    seed : int
        Seeds the shoppers' clicks, the customer effects and the exploration.
    rerank : bool
        Serve (and evaluate) the retrained model as a re-ranker of the initial
        model's top ``top_m`` (:class:`~reco_fast.serve.rerank.Reranker`: the set day 0
        explored, so every product it shows had a logged propensity); False serves
        it on the whole catalog (off-policy evaluation then misses the slots it
        fills with products day 0 never showed: ``unsupported_slots``).
    """
    import reco_fast
    from reco_fast.build.retrain import retrain

    if isinstance(days, bool) or not isinstance(days, int) or days < 2:
        raise ValueError(f"days must be an integer >= 2 (day 0 and an A/B day), got {days!r:.40}")
    if isinstance(requests_per_day, bool) or not isinstance(requests_per_day, int):
        raise ValueError(f"requests_per_day must be an integer, got {requests_per_day!r:.40}")
    if requests_per_day < 100:
        raise ValueError(f"requests_per_day must be >= 100, got {requests_per_day}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if initial is None:
        from reco_fast.build.data import generate_default, load
        from reco_fast.build.pipeline import build

        data_dir = out / "data"
        log_path, catalog_path = generate_default(data_dir)
        if initial_rows is not None:
            lines = log_path.read_text().splitlines(keepends=True)
            if not 100 <= initial_rows < len(lines) - 1:
                raise ValueError(
                    f"initial_rows must be in [100, {len(lines) - 1}), got {initial_rows}"
                )
            log_path = data_dir / f"first_{initial_rows}_page_views.csv"
            log_path.write_text("".join(lines[: initial_rows + 1]))
        log.info("building the initial model on %s", log_path)
        # uncalibrated, like the model retrained from its impressions: the two variants'
        # probabilities (and the softmax exploration over them) are on the same scale
        build(log_path, catalog_path, out=out / "models" / "initial", calibration=None)
        initial = out / "models" / "initial"
        base_log = load(log_path, catalog_path).log
    initial_model = initial if hasattr(initial, "recommend") else reco_fast.load(initial)
    shop = ShopperModel.generate(
        days * requests_per_day, click_seed=seed, examination_decay=examination_decay
    )
    shop.check_catalog(initial_model)
    rng = np.random.default_rng(seed)
    log_dir = out / "impressions"
    if log_dir.exists() and any(log_dir.glob("*.jsonl")):
        raise ValueError(f"{log_dir} already holds an impression log; choose a new --out")
    impression_log = ImpressionLog(
        JsonlSink(log_dir), maxsize=max(100_000, 4 * requests_per_day * (k + 1))
    )
    tallies: list[_Day] = []
    try:
        # ---- day 0: the initial model, exploring ----
        log.info("day 0: %d requests, initial model with softmax exploration", requests_per_day)
        policy = SoftmaxSampling(temperature, top_m, seed=seed)
        day0 = LoggedRecommender(initial_model, impression_log, policy, variant="initial")
        tallies.append(_Day())
        _serve(day0, shop, range(requests_per_day), 0, k, threshold, rng, tallies[0])
        impression_log.flush(timeout=None)
        imps0, _ = load_joined(log_dir)
        held = [i for i in imps0 if bucket(i.record["session_id"], HOLDOUT_SALT) < holdout]
        train = [i for i in imps0 if bucket(i.record["session_id"], HOLDOUT_SALT) >= holdout]

        # ---- retrain on the rest of day 0 ----
        log.info("retraining on %d day-0 impressions (%d held out)", len(train), len(held))
        retrained = retrain(
            train, initial_model, out / "models" / "retrained", params=retrain_params
        )

        served = Reranker(retrained, initial_model, top_m) if rerank else retrained

        # ---- off-policy estimate from the held-out day-0 impressions ----
        ope = estimate(held, model_ranker(served, k, threshold))
        on_logged = _expected_ctr(served, shop, held, k, threshold)

        # ---- days 1..: A/B ----
        router = ABRouter(
            {"initial": initial_model, "retrained": served},
            {"initial": 0.5, "retrained": 0.5},
            log=impression_log,
        )
        for day in range(1, days):
            log.info("day %d: %d requests, A/B initial vs retrained", day, requests_per_day)
            tallies.append(_Day())
            rows = range(day * requests_per_day, (day + 1) * requests_per_day)
            _serve(router, shop, rows, day, k, threshold, rng, tallies[day])
        impression_log.flush(timeout=None)
    finally:
        impression_log.close(timeout=None)
    stats = impression_log.stats()
    if stats["dropped"] or stats["failed"] or stats["unserializable"]:
        raise RuntimeError(f"the simulation lost impression records: {stats}")

    imps, counts = load_joined(log_dir)
    result_days: list[dict[str, Any]] = []
    for day, tally in enumerate(tallies):
        lo = START_TS + day * DAY_SECONDS
        todays = [i for i in imps if lo <= i.record["ts"] < lo + DAY_SECONDS]
        variants = {}
        for name in sorted({i.variant for i in todays}):
            stats_v = variant_stats([i for i in todays if i.variant == name])
            slots = tally.slots.get(name, 0)
            stats_v["expected_ctr"] = tally.expected.get(name, 0.0) / slots if slots else 0.0
            del stats_v["model_ids"]
            variants[name] = stats_v
        result_days.append({"day": day, "variants": variants})

    later = [d["variants"]["retrained"] for d in result_days[1:] if "retrained" in d["variants"]]
    clicks = sum(v["clicks"] for v in later)
    shown = sum(v["impressions"] for v in later)
    expected = sum(t.expected.get("retrained", 0.0) for t in tallies[1:])
    truth = clicks / shown if shown else math.nan
    lo_ci, hi_ci = ope["ips_ci"]
    result = {
        "days": result_days,
        "off_policy": {
            "estimator": "ips",
            "estimate": ope["ips"],
            "ci": ope["ips_ci"],
            "truth": truth,
            "truth_ci": list(wilson_interval(clicks, shown)),
            "truth_expected": expected / shown if shown else math.nan,
            "truth_on_logged_sessions": on_logged,
            "covers_truth": bool(lo_ci <= truth <= hi_ci),
            "snips": ope["snips"],
            "snips_ci": ope["snips_ci"],
            "requests": ope["requests"],
            "matched_slots": ope["matched_slots"],
            "clipped": ope["clipped"],
            "unsupported_slots": ope["unsupported_slots"],
        },
        "models": {
            "initial": str(initial_model.path),
            "retrained": str(retrained.path),
            "retrained_training": dict(retrained.metadata.training or {}),
        },
        "log": counts,
        "config": {
            "days": days,
            "requests_per_day": requests_per_day,
            "k": k,
            "threshold": threshold,
            "exploration": policy.to_json(),
            "holdout": holdout,
            "initial_rows": initial_rows if base_log is not None else None,
            "base_rows": 0 if base_log is None else len(base_log),
            "seed": seed,
            "examination_decay": examination_decay,
            "rerank": rerank,
            "training_requests": len(train),
            "holdout_requests": len(held),
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    (out / SIMULATION_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_simulation(result: dict[str, Any]) -> str:
    """The simulation's days and its off-policy estimate as Markdown."""
    lines = [
        "| day | variant | requests | impressions | clicks | CTR | CTR 95% CI | expected CTR |",
        "|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for d in result["days"]:
        for name, v in d["variants"].items():
            lo, hi = v["ctr_ci"]
            lines.append(
                f"| {d['day']} | {name} | {v['requests']:,} | {v['impressions']:,} | "
                f"{v['clicks']:,} | {v['ctr']:.4f} | [{lo:.4f}, {hi:.4f}] | "
                f"{v['expected_ctr']:.4f} |"
            )
    o = result["off_policy"]
    lo, hi = o["ci"]
    lines += [
        "",
        f"Off-policy (IPS, from day 0's held-out log) CTR of the retrained model: "
        f"{o['estimate']:.4f} [{lo:.4f}, {hi:.4f}]; measured on days 1+: {o['truth']:.4f} "
        f"(expected {o['truth_expected']:.4f}); "
        f"{'covered' if o['covers_truth'] else 'NOT covered'}.",
    ]
    return "\n".join(lines)
