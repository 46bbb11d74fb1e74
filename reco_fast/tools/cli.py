"""``reco-fast``: build, inspect, verify, benchmark and use model artifacts from the shell.

Every failure exits non-zero with a one-line error, so a deploy pipeline can
refuse a model without parsing a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reco_fast import __version__
from reco_fast.errors import ArtifactError, InputError, RecoFastError
from reco_fast.metadata import ArtifactMetadata

__all__ = ["build_main", "main"]

BENCH_GATE_FAILED = 3
"""Exit status of ``reco-fast bench`` when a gate fails (errors exit 1 or 2)."""
BAD_INPUT = 2
"""Exit status for bad input (an :class:`InputError`) and bad arguments (argparse)."""
FAILED = 1
"""Exit status for every other failure: a damaged artifact, a failed compile, I/O..."""
DEFAULT_THRESHOLD = 0.7
"""``reco-fast build``'s high-confidence threshold when ``--threshold`` is not given."""
MAX_ERROR_CHARS = 500
"""An error line is cut to this length: never echo a whole input."""

# Failures that say what is wrong in their message; anything else is shown with its
# type, as a failure of reco_fast itself, and -v shows its traceback.
_EXPECTED = (RecoFastError, OSError, ValueError, TypeError, ImportError, RecursionError)


def _build(args: argparse.Namespace) -> int:
    if args.impressions is not None and args.events is None:
        return _build_impressions(args)
    if args.events is not None:
        return _build_events(args)
    if args.base is not None:
        raise InputError("--base goes with --impressions DIR", field="--base")
    if args.columns is not None or args.event_types is not None:
        raise InputError("--columns and --event-types go with --events FILE", field="--columns")
    if args.objective != "binary":
        raise InputError(
            f"--objective {args.objective} trains on an event log's page views (one group "
            "each): give --events FILE --columns ...",
            field="--objective",
        )
    from reco_fast.build.pipeline import build

    result = build(
        args.data,
        args.catalog,
        args.out,
        feature_set=args.features,
        data_dir=args.data_dir,
        seed=args.seed,
        threshold=args.threshold,  # None: DEFAULT_THRESHOLD, unless a target chooses it
        engine=args.engine,
        spark_master=args.spark_master,
        spark_workers=args.spark_workers,
        calibration={"none": None, None: "default"}.get(args.calibration, args.calibration),
        target_precision=args.target_precision,
        target_coverage=args.target_coverage,
    )
    if not args.quiet:
        print(result.markdown)
    m = result.report
    ev = m["threshold_choice"]["evaluation_half"]
    print(
        f"artifact: {result.model.path}  (AUC {m['metrics']['auc']:.4f}, "
        f"threshold {result.model.threshold:.4g}: held-out precision "
        + ("n/a" if ev["precision"] is None else f"{ev['precision']:.1%}")
        + f", coverage {ev['coverage']:.1%}; built in {result.seconds:.1f} s)"
    )
    return 0


def _build_impressions(args: argparse.Namespace) -> int:
    """``build --impressions DIR``: the code of ``reco-fast retrain`` (loop_cli), one implementation."""
    from reco_fast.tools.loop_cli import summary, train_from_impressions

    if args.columns is not None or args.event_types is not None:
        raise InputError(
            "--columns and --event-types go with --events FILE (an event-log model trained "
            "on the impression log: --events FILE --columns ... --impressions DIR)",
            field="--columns",
        )
    if args.features != "ranking":
        raise InputError(
            "--features does not go with --impressions: the new model has the base model's "
            "features (plus the position at training)",
            field="--features",
        )
    for option, value, default in (
        ("--objective", args.objective, "binary"),
        ("--engine", args.engine, "local"),
        ("--calibration", args.calibration, None),
        ("--target-precision", args.target_precision, None),
        ("--target-coverage", args.target_coverage, None),
    ):
        if value != default:
            raise InputError(
                f"{option} {value} does not go with --impressions (a GradientBoostingClassifier "
                "trained locally on the logged shown products)",
                field=option,
            )
    base = args.out if args.base is None else args.base
    if args.base is None and not (Path(base) / "metadata.json").is_file():
        raise InputError(
            f"--impressions needs the model that served the log, for its features, vocabulary "
            f"and catalog: --base ARTIFACT (default: the artifact at --out, {str(base)[:200]!r}, "
            "which is not there)",
            field="--base",
        )
    start = time.perf_counter()
    model = train_from_impressions(
        args.impressions,
        base,
        args.out,
        base_data=args.data,
        base_catalog=args.catalog,
        threshold=args.threshold,
    )
    if not args.quiet:
        print((Path(model.path) / "report.md").read_text(encoding="utf-8"))
    print(summary(model, time.perf_counter() - start))
    return 0


def _build_events(args: argparse.Namespace) -> int:
    from reco_fast.build.pipeline import build_events

    if args.impressions is not None:
        if args.base is not None:
            raise InputError(
                "--base does not go with --events: an event-log model trained on impressions "
                "takes its item tables and features from the event log (--base is for a "
                "page-view model's --impressions build)",
                field="--base",
            )
        if args.objective != "binary":
            raise InputError(
                f"--objective {args.objective} does not go with --impressions (a "
                "GradientBoostingClassifier trained on the logged shown products)",
                field="--objective",
            )
    elif args.base is not None:
        raise InputError("--base goes with --impressions DIR", field="--base")
    if args.engine != "local":
        raise InputError(
            "--engine spark trains the page-view model (--data, or the generated data); "
            "event-log builds (--events) train on this machine",
            field="--engine",
        )
    if args.columns is None:
        raise InputError(
            "--events needs --columns, e.g. --columns time=event_time,session=user_session,"
            "product=product_id (time and product required; session or user)",
            field="--columns",
        )
    if args.data is not None or args.catalog is not None:
        raise InputError(
            "--events replaces --data and --catalog; give one or the other", field="--events"
        )
    for name in ("threshold", "target_precision", "target_coverage"):
        if getattr(args, name) is not None:
            raise InputError(
                f"--{name.replace('_', '-')} is for page-view models: an event-log model ranks "
                "(its threshold is 0)",
                field=f"--{name.replace('_', '-')}",
            )
    result = build_events(
        args.events,
        args.columns,
        args.out,
        event_types=args.event_types,
        seed=args.seed,
        objective=args.objective,
        impressions=args.impressions,
    )
    if not args.quiet:
        print(result.markdown)
    model = result.evaluation["methods"]["model"]
    training = result.evaluation["training"]
    trained_on = (
        f"trained on {training['rows']:,} shown products of the impression log, "
        f"{training['positives']:,} clicked, position fixed at 0; "
        if training.get("source") == "impressions"
        else ""
    )
    print(
        f"artifact: {result.model.path}  ({trained_on}HitRate@{result.evaluation['k']} "
        f"{model['hit_rate']:.4f}, MRR {model['mrr']:.4f} on the held-out replay; "
        f"built in {result.seconds:.1f} s)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    # Reads metadata.json and report.json only: never imports the artifact's native
    # library, so it is safe on an artifact that is damaged, foreign or untrusted.
    from reco_fast.artifact import METADATA_FILE, load_metadata_file

    root = Path(args.artifact)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; build one with `python build_model.py`")
    if not (root / METADATA_FILE).is_file():
        raise ArtifactError(f"{root} has no {METADATA_FILE}: not a reco_fast artifact")
    meta = load_metadata_file(root / METADATA_FILE)
    if args.json:
        shown = meta.to_json()
        shown.pop("golden", None)
        print(json.dumps(shown, indent=2))
    else:
        print(info_summary(root, meta, _read_report(root)))
    return 0


def _read_report(root: Path) -> dict[str, Any] | str:
    """report.json as a dict, or why it cannot be shown."""
    path = root / "report.json"
    if not path.is_file():
        return "none (built by compile_model, not the build pipeline)"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"unreadable ({type(exc).__name__})"
    return report if isinstance(report, dict) else "unreadable (not a JSON object)"


def _get(d: Any, *keys: str) -> Any:
    """d[k1][k2]... or None when any level is missing or not a dict."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def info_summary(root: Path, meta: ArtifactMetadata, report: dict[str, Any] | str) -> str:
    """The human summary ``reco-fast info`` prints: what the model is, its features,
    its test-split quality, its backend and how it was built (metadata and report only)."""
    from reco_fast.artifact import platform_tag

    lines = [f"{root}: reco_fast model artifact (format {meta.format_version})"]

    def row(label: str, text: str) -> None:
        lines.append(
            textwrap.fill(
                text,
                width=100,
                break_on_hyphens=False,
                initial_indent=f"{label + ':':<12}",
                subsequent_indent=" " * 12,
            )
        )

    params = meta.estimator
    model = "binary GradientBoostingClassifier"
    trees, depth = meta.n_trees, params.get("max_depth")
    model += f", {trees} trees" + (f" of depth {depth}" if depth is not None else "")
    if params.get("learning_rate") is not None:
        model += f", learning rate {params['learning_rate']}"
    if (
        meta.family == "sklearn-gb" or "family" in meta.absent_keys
    ):  # other families: the line below
        row("model", model + ": click probability of a recommendation")

    names, fs = meta.feature_names, meta.feature_set
    row(
        "features",
        f"{len(names)}" + (f" ({fs} set)" if fs else "") + ": " + ", ".join(names),
    )
    threshold = _num(meta.threshold)
    auc = _num(_get(report, "metrics", "auc"))
    hc = _get(report, "high_confidence")
    if isinstance(report, str):
        row("report", report)
    else:
        quality = []
        split = _get(report, "split", "test")
        if auc is not None:
            quality.append(f"AUC {auc:.4f}")
        ctr, cut = _num(_get(hc, "ctr")), _num(_get(hc, "threshold"))
        if ctr is not None and cut is not None:
            shown, clicks = _get(hc, "shown"), _get(hc, "clicks")
            quality.append(
                f"CTR at >= {cut:g}: {ctr:.1%}"
                + (
                    f" ({clicks:,} of {shown:,} shown)"
                    if isinstance(shown, int) and isinstance(clicks, int)
                    else ""
                )
            )
        base = _num(_get(report, "dataset", "click_rate"))
        if base is not None:
            quality.append(f"base click rate {base:.1%}")
        if quality:
            where = f"test split ({split:,} rows): " if isinstance(split, int) else ""
            row("quality", where + ", ".join(quality))
    if threshold is not None:
        row("threshold", f"{threshold:g} (recommend shows products at or above it)")
    cal, choice = meta.calibration, meta.threshold_choice
    if isinstance(cal, dict):
        row(
            "calibrated",
            f"{str(cal.get('method'))[:20]} on held-out rows: predict_proba is the calibrated "
            "probability, decision_function the raw margin",
        )
    ev = _get(choice, "evaluation_half")
    if isinstance(choice, dict) and isinstance(ev, dict):
        prec, cov = _num(ev.get("precision")), _num(ev.get("coverage"))
        row(
            "held out",
            f"threshold rule {str(choice.get('rule'))[:20]}"
            + (f" {choice['target']:g}" if _num(choice.get("target")) is not None else "")
            + "; evaluation half: precision "
            + ("n/a" if prec is None else f"{prec:.1%}")
            + ("" if cov is None else f", coverage {cov:.1%}"),
        )
    if "family" not in meta.absent_keys:  # format 3: what the model is and gives
        row(
            "model",
            f"{meta.family[:40]} {meta.objective[:40]}"
            + (f", {trees} trees" if isinstance(trees, int) else "")
            + ": "
            f"{meta.output[:20]} (decision_function: the raw margin); "
            f"NaN {'routed as learned' if meta.missing_values == 'routed' else 'refused'}",
        )
    backend = meta.backend
    if backend:
        speeds = meta.backends
        timed = ", ".join(
            f"{name} {ns:,.0f}"
            for name, ns in ((n, _num(_get(speeds, n, "ns_per_row"))) for n in speeds)
            if ns is not None
        )
        row("backend", str(backend) + (f" (ns/row at build: {timed})" if timed else ""))
    v = meta.verification
    if _num(v.get("max_abs_diff")) is not None:
        reference = str(v.get("reference", "scikit-learn's predict_proba"))[:60]
        row(
            "verified",
            f"equal to {reference} on {v.get('rows')} + "
            f"{v.get('adversarial_rows')} adversarial rows (max |diff| {v['max_abs_diff']:.3g}, "
            f"tolerance {v.get('tolerance')})",
        )
    versions, plat = meta.versions, meta.platform
    built = meta.created
    if plat:
        built += f" on {plat.get('system')} {plat.get('machine')}, Python {plat.get('python')}"
    if versions:
        built += "; " + ", ".join(f"{k} {val}" for k, val in versions.items() if k != "python")
    row("built", built)
    here = platform_tag()
    if plat and any(plat.get(k) != here[k] for k in ("system", "machine", "ext_suffix")):
        row(
            "platform",
            f"built for another platform: cannot be loaded here ({here['system']} "
            f"{here['machine']}, {here['ext_suffix']})",
        )
    data = meta.data
    if data is not None and data.get("source"):
        rows = data.get("rows")
        row("data", f"{data['source']}" + (f" ({rows:,} rows)" if isinstance(rows, int) else ""))
    row(
        "library",
        f"{meta.library} (not loaded by info; `reco-fast verify` checks every file's "
        "checksum and the golden outputs)",
    )
    lines.append("Full metadata: reco-fast info --json " + str(root))
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    from reco_fast.artifact import read_artifact
    from reco_fast.serve.model import load

    # Every check that needs no native code first (metadata checksum, format, platform,
    # file names, every file's sha256): a failing artifact is refused before any of it runs.
    read_artifact(args.artifact)
    model = load(args.artifact)  # checks again, imports the checked bytes, golden outputs
    meta = model.metadata
    v = meta.verification
    sessions = meta.golden_sessions or {}
    print(
        f"ok: {model.path} passes its checksums and {len(meta.golden['proba'])} golden "
        f"outputs, {len(sessions.get('sessions', []))} golden sessions and "
        f"{len(sessions.get('recommend', []))} golden recommendations on "
        f"{', '.join(model.available_backends())} (built verified on {v.get('rows')} + "
        f"{v.get('adversarial_rows')} adversarial rows, max |diff| {v.get('max_abs_diff'):.3g})"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from reco_fast.serve.model import load
    from reco_fast.tools import bench

    model = load(args.artifact, backend=args.backend)
    progress = None if args.json else (lambda msg: print(f"measuring {msg}", file=sys.stderr))
    report = bench.run(
        model,
        rounds=args.rounds,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        catalog_sizes=args.catalog_sizes,
        progress=progress,
    )
    results = bench.check(report, {g.option: getattr(args, g.option) for g in bench.GATES})
    print(bench.to_json(report, results) if args.json else bench.format_table(report, results))
    if args.catalog_sizes and not args.json:
        print("\n" + bench.catalog_table(report))
    return 0 if all(r.passed for r in results) else BENCH_GATE_FAILED


class _Terminated(BaseException):
    """SIGTERM during ``score``: unwinds like Ctrl-C, so the partial output is removed."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _score(args: argparse.Namespace) -> int:
    from reco_fast.serve.model import load
    from reco_fast.tools.score import score_file

    model = load(args.artifact)
    start = time.perf_counter()
    # SIGTERM (a deploy, a timeout) would end the process where it stands and leave the
    # hidden .part file; as an exception it unwinds through score_file, which removes it.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        rows = score_file(
            model,
            args.input,
            args.output,
            chunksize=args.chunksize,
            on_invalid=args.on_invalid,
            progress=None if args.quiet else sys.stderr,
        )
    except _Terminated:
        print("reco-fast score: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - start
    if not args.quiet:
        print(
            f"wrote {args.output}: {rows:,} rows in {seconds:.1f} s "
            f"({rows / seconds if seconds else 0:,.0f} rows/s)",
            file=sys.stderr,
        )
    return 0


def _read_session(text: str) -> Any:
    """--session: inline JSON, @file.json, or @- for stdin."""
    source = "--session"
    if text.startswith("@"):
        name = text[1:]
        source = name if name != "-" else "stdin"
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the session from {name}: {exc}") from None
    try:
        session = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(
            f"{source} is nested too deeply to parse; a session is one flat JSON object"
        ) from None
    if not isinstance(session, dict):
        raise InputError(
            f"{source} must be a JSON object (one page view), got {type(session).__name__}"
        )
    return session


def _recommend(args: argparse.Namespace) -> int:
    from reco_fast.serve.model import load

    session = _read_session(args.session)
    model = load(args.artifact)
    threshold = model.threshold if args.threshold is None else args.threshold
    recs = model.recommend(session, k=args.k, threshold=threshold)
    print(
        json.dumps(
            {
                "k": args.k,
                "threshold": threshold,
                "recommendations": [
                    {"product_id": r.product_id, "probability": r.probability, "reason": r.reason}
                    for r in recs
                ],
            },
            indent=2,
        )
    )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _sizes(text: str) -> list[int]:
    return [_positive_int(n) for n in text.split(",") if n.strip()]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already gives it,
    or there is nothing to show (None, False for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return super()._get_help_string(action)


def _verbose(p: argparse.ArgumentParser, default: Any = False) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="debug logging, and a traceback with any error",
    )


def _version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def _build_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--data", help="page-view log CSV in the seed's schema (default: generate one)")
    b.add_argument("--catalog", help="product catalog CSV: product_id, category, price")
    b.add_argument(
        "--events",
        metavar="FILE",
        help="a raw event log (CSV with any delimiter, TSV or Parquet; one row per event) "
        "instead of --data: trains a next-product ranker and evaluates it on held-out sessions",
    )
    b.add_argument(
        "--columns",
        metavar="KEY=COL,...",
        help="with --events: time=COL,product=COL (required), session=COL and/or user=COL, "
        "optional type=COL, category=COL, price=COL",
    )
    b.add_argument(
        "--event-types",
        metavar="TYPE=VALUE,...",
        help="with --events: the log's names of view, cart, purchase and remove "
        "(default view,cart,purchase,remove_from_cart)",
    )
    b.add_argument(
        "--impressions",
        metavar="DIR",
        help="an impression log directory (reco_fast.serve.impressions) instead of --data: "
        "trains on shown-and-clicked against shown-and-not-clicked products with the shown "
        "position as a feature, fixed at 0 at serving; --data/--catalog then add the base "
        "model's page views at position 0 (same as `reco-fast retrain`). With --events FILE: "
        "an event-log model, its item tables learned from the events, its training rows the "
        "logged shown products (sessions logged by EventTracker)",
    )
    b.add_argument(
        "--base",
        metavar="ARTIFACT",
        help="with --impressions: the model that served the log, whose features, vocabulary "
        "and catalog the new model takes (default: the artifact at --out, rebuilt in place)",
    )
    b.add_argument(
        "--objective",
        default="binary",
        choices=["binary", "lambdarank"],
        help="with --events: binary (scikit-learn's GradientBoostingClassifier, the default) "
        "or lambdarank (LightGBM's LambdaMART ranker, one group per page view; needs lightgbm)",
    )
    b.add_argument(
        "--engine",
        default="local",
        choices=["local", "spark"],
        help="local (scikit-learn's GradientBoostingClassifier, the default) or spark "
        "(XGBoost's PySpark estimator on a Spark DataFrame of the training rows; needs "
        "pyspark, xgboost and Java)",
    )
    b.add_argument(
        "--spark-master",
        default="local[2]",
        metavar="URL",
        help="with --engine spark: the Spark master (default local[2])",
    )
    b.add_argument(
        "--spark-workers",
        type=int,
        default=1,
        metavar="N",
        help="with --engine spark: XGBoost workers, at most the cluster's task slots (default 1)",
    )
    b.add_argument("--out", default="artifacts/reco_model", help="artifact directory")
    b.add_argument(
        "--features",
        default="ranking",
        choices=["ranking", "seed"],
        help="feature set: ranking (the seed's 19 + 5 candidate features) or seed (the 19 alone)",
    )
    b.add_argument(
        "--data-dir", default="data", help="where the generated data goes (without --data)"
    )
    b.add_argument("--seed", type=int, default=42, help="generator seed")
    b.add_argument(
        "--threshold",
        type=float,
        help="high-confidence threshold on the served probability; --target-precision or "
        "--target-coverage choose it on held-out rows instead, and a build from --impressions "
        f"keeps the base model's unless this is given (default: {DEFAULT_THRESHOLD})",
    )
    b.add_argument(
        "--target-precision",
        type=float,
        metavar="P",
        help="choose the threshold on held-out rows: the lowest whose recommendations were "
        "clicked at least a share P of the time",
    )
    b.add_argument(
        "--target-coverage",
        type=float,
        metavar="C",
        help="choose the threshold on held-out rows: the highest that gives at least a share "
        "C of page views one recommendation or more",
    )
    b.add_argument(
        "--calibration",
        default=None,
        choices=["sigmoid", "isotonic", "none"],
        help="calibrate probabilities on held-out rows (scikit-learn's CalibratedClassifierCV): "
        "sigmoid (Platt, keeps the ranking), isotonic, or none (the estimator's own "
        "probabilities; the default: calibration costs recommend latency, see the README)",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="do not print the report")
    b.set_defaults(func=_build, command="build")


BUILD_DESCRIPTION = (
    "Data -> features -> training -> report -> C -> verification -> artifact. With no "
    "arguments: generate the seed-like default data into data/, train, print the report, "
    "compile, verify against scikit-learn and write artifacts/reco_model/. Progress and "
    "timings go to stderr, the report to stdout."
)


def build_parser(prog: str = "build_model.py") -> argparse.ArgumentParser:
    """The parser of ``python build_model.py``: ``reco-fast build``'s options under its own name."""
    p = argparse.ArgumentParser(
        prog=prog, description=BUILD_DESCRIPTION, formatter_class=_HelpFormatter
    )
    _verbose(p)
    _version(p)
    _build_arguments(p)
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reco-fast",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=_HelpFormatter,
    )
    _verbose(p)
    _version(p)
    # -v also after the subcommand; SUPPRESS keeps `reco-fast -v build` from being reset
    common = argparse.ArgumentParser(add_help=False)
    _verbose(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], formatter_class=_HelpFormatter, **kwargs)

    b = add(
        "build",
        help="data -> features -> training -> C -> verified artifact",
        description=BUILD_DESCRIPTION,
    )
    _build_arguments(b)

    i = add(
        "info",
        help="what an artifact holds: model, features, metrics, backend, versions",
        description="A short summary of an artifact from its metadata.json and report.json: "
        "what the model is, its features, AUC and click rate at the threshold, backend, "
        "when and with which versions it was built. Never loads the artifact's native "
        "library (so it is safe on any directory); `reco-fast verify` checks it.",
    )
    i.add_argument("artifact")
    i.add_argument(
        "--json",
        action="store_true",
        help="print metadata.json in full instead (without the golden-output rows)",
    )
    i.set_defaults(func=_info)

    v = add("verify", help="re-check an artifact's checksums and golden outputs")
    v.add_argument("artifact")
    v.set_defaults(func=_verify)

    from reco_fast.serve.model import BACKENDS
    from reco_fast.tools.bench import DEFAULT_BATCH_SIZES, DEFAULT_ROUNDS, GATES

    be = add(
        "bench",
        help="measure an artifact's latency on this machine; fail when a gate is exceeded",
        description="Time single page views, feature batches, whole-catalog recommend and "
        "tracker event + recommend (p50 and p99 of each call, one thread unless stated), "
        "print the table, and exit non-zero if any gate given below is exceeded.",
        epilog=f"exit status: 0 every gate given passes, {BENCH_GATE_FAILED} a gate failed "
        "(or its case does not apply to this artifact), 1 the artifact cannot be loaded, "
        "2 bad arguments. Progress goes to stderr, the table (or --json) to stdout.",
    )
    be.add_argument("artifact")
    be.add_argument(
        "--backend",
        choices=BACKENDS,
        help="evaluator to measure (default: the artifact's)",
    )
    be.add_argument(
        "--rounds",
        type=_positive_int,
        default=DEFAULT_ROUNDS,
        help=f"timed calls per latency case (default {DEFAULT_ROUNDS}); batches of N rows "
        "get fewer, about rounds*1000/N",
    )
    be.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=list(DEFAULT_BATCH_SIZES),
        metavar="N,N,...",
        help="comma-separated batch sizes in rows (default "
        + ",".join(map(str, DEFAULT_BATCH_SIZES))
        + "); the largest one is the --max-batch-ns case",
    )
    be.add_argument(
        "--threads",
        type=int,
        default=None,
        help="also score the largest batch (if >= 8192 rows) with n_threads=this "
        "(default: the usable cores; 1: skip)",
    )
    be.add_argument(
        "--catalog-sizes",
        type=_sizes,
        default=[],
        metavar="N,N,...",
        help="also attach a synthetic catalog of each size and time top-10 recommend (the "
        "whole-catalog path and the per-product kernel side by side), tracker event + "
        "recommend, with_catalog and its bytes per product; e.g. 250,10000,100000,1000000",
    )
    be.add_argument("--json", action="store_true", help="print the results as JSON")
    for gate in GATES:
        be.add_argument(
            "--" + gate.option.replace("_", "-"),
            type=float,
            metavar=gate.unit.upper().replace("/", "_"),
            help=f"gate: {gate.help} must be <= this ({gate.unit})",
        )
    be.set_defaults(func=_bench)

    from reco_fast.tools.score import DEFAULT_CHUNKSIZE, ON_INVALID

    sc = add(
        "score",
        help="score a CSV (or Parquet) file of page views in chunks, in constant memory",
        description="Read page views in the seed's schema chunk by chunk, score each chunk "
        "with the compiled model and write the rows with an added click_probability column "
        "to a CSV file. Memory is bounded by --chunksize, not by the input. Needs pandas "
        "(the build extra); Parquet input needs pyarrow.",
        epilog="Progress ('scored N rows (P%%)') goes to stderr. The output appears only "
        "when every row has been scored.",
    )
    sc.add_argument("artifact")
    sc.add_argument("--input", required=True, metavar="FILE", help="page views: .csv or .parquet")
    sc.add_argument("--output", required=True, metavar="FILE", help="scored rows (CSV)")
    sc.add_argument(
        "--chunksize",
        type=_positive_int,
        default=DEFAULT_CHUNKSIZE,
        metavar="N",
        help=f"rows per chunk (default {DEFAULT_CHUNKSIZE:,})",
    )
    sc.add_argument(
        "--on-invalid",
        choices=list(ON_INVALID),
        default="raise",
        help="an invalid row stops the run with its row number (raise, default) or is "
        "scored as NaN (nan; needs a reco_fast whose predict_proba has on_invalid)",
    )
    sc.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    sc.set_defaults(func=_score)

    r = add(
        "recommend",
        help="the top products for one page view, as JSON",
        description="Score the artifact's catalog against one session (a JSON object in "
        "the seed's schema, recommended_product_id not needed) and print at most k "
        "recommendations at or above the threshold as JSON. An empty list is a valid answer.",
    )
    r.add_argument("artifact")
    r.add_argument(
        "--session",
        required=True,
        metavar="JSON|@FILE",
        help="the session as inline JSON, @file.json, or @- for stdin",
    )
    r.add_argument("-k", type=int, default=3, help="at most this many (default 3)")
    r.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="minimum click probability (default: the artifact's, usually 0.7)",
    )
    r.set_defaults(func=_recommend)
    from reco_fast.tools import loop_cli  # evaluate, ab-report, simulate, retrain (issue 14)

    loop_cli.add_parsers(sub, [common], _HelpFormatter)
    return p


def error_line(exc: BaseException) -> str:
    """One line for a failure: the message of an error reco_fast (or the OS, or a bad
    value) raised on purpose; the type too for anything else. Bounded in length."""
    message = " ".join(str(exc).split())
    if isinstance(exc, RecursionError):
        message = "the input is nested too deeply to process"
    elif not isinstance(exc, _EXPECTED) or not message:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message


def _run(p: argparse.ArgumentParser, argv: Sequence[str] | None, name: Callable[[Any], str]) -> int:
    """Parse, configure logging, run; turn every failure into one line and an exit status."""
    args = p.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{name(args)}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        hint = "" if isinstance(exc, _EXPECTED) or verbose else " (-v shows the traceback)"
        print(f"{name(args)}: error: {error_line(exc)}{hint}", file=sys.stderr)
        return BAD_INPUT if isinstance(exc, InputError) else FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``reco-fast``. Exit status: 0 success, 1 failure (one line on stderr: the
    artifact, the compile, the disk...), 2 bad input or arguments, 3 a bench gate
    failed, 130 interrupted. ``-v`` (before or after the subcommand) adds debug
    logging and tracebacks."""
    return _run(parser(), argv, lambda args: f"reco-fast {args.command}")


def build_main(argv: Sequence[str] | None = None, prog: str = "build_model.py") -> int:
    """``python build_model.py``: ``reco-fast build`` under its own name (same exit statuses)."""
    return _run(build_parser(prog), argv, lambda args: prog)


if __name__ == "__main__":
    sys.exit(main())
