"""``reco-fast evaluate / ab-report / simulate / retrain``: the feedback loop's commands.

:func:`add_parsers` adds them to ``reco-fast``'s subparsers (reco_fast/tools/cli.py
calls it); until then, and in tests, ``python -m reco_fast.tools.loop_cli COMMAND ...``
runs them with the same error handling and exit statuses (0 success, 2 bad input
or arguments, 1 anything else).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from reco_fast.errors import InputError

__all__ = ["add_parsers", "main", "summary", "train_from_impressions"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r:.40}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _json_out(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, allow_nan=True))


def _evaluate(args: argparse.Namespace) -> int:
    import reco_fast
    from reco_fast.build.offpolicy import evaluate_model

    model: Any = reco_fast.load(args.artifact)
    if args.rerank_with is not None:
        from reco_fast.serve.rerank import Reranker

        model = Reranker(model, reco_fast.load(args.rerank_with), args.top_m)
    result = evaluate_model(
        model,
        args.impressions,
        k=args.k,
        threshold=args.threshold,
        variant=args.variant,
        clip=args.clip,
        ci=args.ci,
    )
    if args.json:
        _json_out(result)
        return 0
    pct = round(result["level"] * 100)
    print(f"{args.artifact} on {result['requests']:,} logged requests ({args.impressions})")
    for name in ("ips", "snips"):
        lo, hi = result[f"{name}_ci"]
        print(f"  {name.upper():6s} CTR {result[name]:.4f}  {pct}% CI [{lo:.4f}, {hi:.4f}]")
    print(
        f"  logged CTR {result['logged_ctr']:.4f}; {result['matched_slots']:,} of "
        f"{result['slots']:,} candidate slots matched the log, {result['clipped']:,} weights "
        f"clipped at {result['clip']:g}"
    )
    if result["unsupported_slots"]:
        share = result["unsupported_slots"] / max(1, result["slots"])
        print(
            f"  warning: {result['unsupported_slots']:,} slots ({share:.0%}) show products the "
            "logging policy could not have shown there; the estimates are biased low "
            "(log with exploration, or evaluate as a re-ranker: --rerank-with)",
            file=sys.stderr,
        )
    return 0


def _ab_report(args: argparse.Namespace) -> int:
    from reco_fast.serve.ab import ab_report, format_ab_report

    report = ab_report(args.directory, args.window)
    if args.json:
        _json_out(report)
    else:
        print(format_ab_report(report))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from reco_fast.build.simulate import SIMULATION_FILE, format_simulation, simulate

    result = simulate(
        args.out,
        days=args.days,
        requests_per_day=args.requests_per_day,
        initial=args.initial,
        initial_rows=None if args.initial_rows == 0 else args.initial_rows,
        k=args.k,
        temperature=args.temperature,
        top_m=args.top_m,
        seed=args.seed,
        rerank=not args.no_rerank,
    )
    if args.json:
        _json_out(result)
    else:
        print(format_simulation(result))
        print(
            f"\nwrote {args.out}/{SIMULATION_FILE} and the impression log {args.out}/impressions/"
        )
    return 0


def train_from_impressions(
    impressions: str,
    base: str,
    out: str,
    *,
    base_data: str | None = None,
    base_catalog: str | None = None,
    threshold: float | None = None,
) -> Any:
    """What ``reco-fast build --impressions`` and ``reco-fast retrain`` run: one implementation.

    Loads ``base`` (the artifact whose features, vocabulary and catalog the new model
    uses), reads ``base_data`` (page views in the seed's schema, added at position 0)
    if given, and calls :func:`reco_fast.build.retrain.retrain`. Returns the new Model.
    """
    import reco_fast
    from reco_fast.build.retrain import retrain

    if base_catalog is not None and base_data is None:
        raise InputError(
            "a catalog for the base page views goes with them: give the page-view CSV too "
            "(build: --data, retrain: --base-data)",
            field="--catalog",
        )
    model = reco_fast.load(base)
    base_log = None
    if base_data is not None:
        from reco_fast.build.data import load

        base_log = load(base_data, base_catalog).log
    return retrain(impressions, model, out, base_log=base_log, threshold=threshold)


def summary(model: Any, seconds: float) -> str:
    """The one line ``build --impressions`` and ``retrain`` print about the new artifact."""
    training = dict(model.metadata.training or {})
    return (
        f"artifact: {model.path}  (trained on {training.get('rows', 0):,} shown products from "
        f"the impression log, {training.get('positives', 0):,} clicked, and "
        f"{training.get('base_rows', 0):,} base page views; position fixed at 0; "
        f"built in {seconds:.1f} s)"
    )


def _retrain(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = train_from_impressions(
        args.impressions,
        args.base,
        args.out,
        base_data=args.base_data,
        base_catalog=args.base_catalog,
    )
    print(summary(model, time.perf_counter() - start))
    return 0


def add_parsers(
    subparsers: Any, parents: Sequence[argparse.ArgumentParser] = (), formatter_class: Any = None
) -> None:
    """Add ``evaluate``, ``ab-report``, ``simulate`` and ``retrain`` to ``reco-fast``'s subparsers.

    ``parents`` and ``formatter_class`` are passed to every ``add_parser`` (cli.py's
    common ``-v`` parser and help formatter). Each sets ``func`` (returns the exit status).
    """
    from reco_fast.build.offpolicy import DEFAULT_CLIP
    from reco_fast.build.simulate import DEFAULT_INITIAL_ROWS
    from reco_fast.serve.impressions import DEFAULT_CLICK_WINDOW

    kw: dict[str, Any] = {"parents": list(parents)}
    if formatter_class is not None:
        kw["formatter_class"] = formatter_class

    e = subparsers.add_parser(
        "evaluate",
        help="estimate a model's CTR on logged impressions (IPS, SNIPS) before it serves",
        description="Off-policy evaluation: replay every logged request through the model "
        "(its top k at the logged threshold) and estimate its click-through rate per shown "
        "slot by inverse propensity scoring and self-normalised IPS, with confidence "
        "intervals. Needs logs with exploration for slots where the model disagrees with "
        "what was shown.",
        **kw,
    )
    e.add_argument("artifact")
    e.add_argument("--impressions", required=True, metavar="DIR", help="impression log directory")
    e.add_argument("--variant", help="only this A/B variant's impressions (default: all)")
    e.add_argument("-k", type=_positive_int, help="products per request (default: the logged k)")
    e.add_argument("--threshold", type=float, help="default: each request's logged threshold")
    e.add_argument(
        "--clip",
        type=float,
        default=DEFAULT_CLIP,
        help=f"largest importance weight (default {DEFAULT_CLIP:g}; inf: none)",
    )
    e.add_argument("--ci", choices=["normal", "bootstrap"], default="normal")
    e.add_argument(
        "--rerank-with",
        metavar="ARTIFACT",
        help="evaluate the model as a re-ranker of this model's top --top-m products",
    )
    e.add_argument(
        "--top-m", type=_positive_int, default=10, help="with --rerank-with (default 10)"
    )
    e.add_argument("--json", action="store_true", help="print the estimate as JSON")
    e.set_defaults(func=_evaluate, command="evaluate")

    a = subparsers.add_parser(
        "ab-report",
        help="per-variant impressions, clicks, CTR (Wilson 95%% CI) and coverage of a log",
        description="Read an impression log directory and report, per A/B variant: requests, "
        "shown products (impressions), clicked shown products, CTR = clicks / impressions "
        "with its Wilson 95%% interval, and coverage (share of requests that showed a product).",
        **kw,
    )
    a.add_argument("directory")
    a.add_argument(
        "--window",
        type=float,
        default=DEFAULT_CLICK_WINDOW,
        help=f"seconds within which an unmatched click joins an impression offline "
        f"(default {DEFAULT_CLICK_WINDOW:g})",
    )
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=_ab_report, command="ab-report")

    s = subparsers.add_parser(
        "simulate",
        help="a simulated shop: serve with exploration, retrain from the log, A/B, evaluate",
        description="Day 0 serves an initial model with softmax exploration to the default "
        "data generator's shoppers and logs; a model retrained from day 0's impressions then "
        "serves beside it in a 50/50 A/B split on days 1..N-1; writes the log and "
        "simulation.json (per-day, per-variant CTR, and the off-policy estimate of the "
        "retrained model from day 0's log against its measured CTR).",
        **kw,
    )
    s.add_argument("--days", type=int, default=2, help="days in total, >= 2 (default 2)")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (new)")
    s.add_argument("--requests-per-day", type=_positive_int, default=10_000, help="(default 10000)")
    s.add_argument("--initial", metavar="ARTIFACT", help="day 0's model (default: built)")
    s.add_argument(
        "--initial-rows",
        type=int,
        default=DEFAULT_INITIAL_ROWS,
        help="without --initial: train it on the first N generated page views "
        f"(default {DEFAULT_INITIAL_ROWS}; 0: all 15000)",
    )
    s.add_argument("-k", type=_positive_int, default=3, help="products per request (default 3)")
    s.add_argument("--temperature", type=float, default=1.0, help="day-0 softmax temperature")
    s.add_argument("--top-m", type=_positive_int, default=10, help="day-0 candidates (default 10)")
    s.add_argument("--seed", type=int, default=0, help="(default 0)")
    s.add_argument(
        "--no-rerank",
        action="store_true",
        help="serve the retrained model on the whole catalog instead of re-ranking the "
        "initial model's top --top-m (its off-policy estimate then misses unlogged products)",
    )
    s.add_argument("--json", action="store_true", help="print simulation.json")
    s.set_defaults(func=_simulate, command="simulate")

    r = subparsers.add_parser(
        "retrain",
        help="train a model from an impression log (same as build --impressions)",
        description="Train on the logged shown products (clicked against not clicked) with "
        "the base model's features plus the shown position, fix the position at 0, compile "
        "and verify into a new artifact with the base model's vocabulary and catalog. "
        "`reco-fast build --impressions DIR --base BASE --out OUT` runs the same code.",
        **kw,
    )
    r.add_argument("base", metavar="BASE_ARTIFACT", help="the model that served the log")
    r.add_argument("--impressions", required=True, metavar="DIR")
    r.add_argument("--out", required=True, metavar="DIR", help="new artifact directory")
    r.add_argument("--base-data", metavar="CSV", help="the base model's page-view log, added")
    r.add_argument("--base-catalog", metavar="CSV", help="its catalog (with --base-data)")
    r.set_defaults(func=_retrain, command="retrain")


def parser() -> argparse.ArgumentParser:
    """A parser with only these subcommands (``python -m reco_fast.tools.loop_cli``)."""
    from reco_fast.tools.cli import _verbose

    p = argparse.ArgumentParser(
        prog="reco-fast", description=__doc__.splitlines()[0] if __doc__ else None
    )
    _verbose(p)
    common = argparse.ArgumentParser(add_help=False)
    _verbose(common, default=argparse.SUPPRESS)
    add_parsers(p.add_subparsers(dest="command", required=True), [common])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one of the loop's subcommands, with ``reco-fast``'s error handling."""
    from reco_fast.tools.cli import _run

    return _run(parser(), argv, lambda args: f"reco-fast {args.command}")


if __name__ == "__main__":
    sys.exit(main())
