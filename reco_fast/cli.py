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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ArtifactError, CompileError, InputError

__all__ = ["main"]

BENCH_GATE_FAILED = 3
"""Exit status of ``reco-fast bench`` when a gate fails (errors exit 1 or 2)."""


def _build(args: argparse.Namespace) -> int:
    from .pipeline import build

    result = build(
        args.data,
        args.catalog,
        args.out,
        feature_set=args.features,
        data_dir=args.data_dir,
        seed=args.seed,
        threshold=args.threshold,
    )
    if not args.quiet:
        print(result.markdown)
    m = result.report
    print(
        f"artifact: {result.model.path}  (AUC {m['metrics']['auc']:.4f}, "
        f"CTR at >= {args.threshold}: {m['high_confidence']['ctr']:.1%}, "
        f"built in {result.seconds:.1f} s)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from .runtime import load

    model = load(args.artifact)
    meta = dict(model.metadata)
    meta.pop("golden", None)
    print(json.dumps(meta, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .runtime import load

    model = load(args.artifact)
    v = model.metadata.get("verification", {})
    print(
        f"ok: {model.path} passes its checksums and {len(model.metadata['golden']['proba'])} "
        f"golden outputs (built verified on {v.get('rows')} + {v.get('adversarial_rows')} "
        f"adversarial rows, max |diff| {v.get('max_abs_diff'):.3g})"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench
    from .runtime import load

    model = load(args.artifact, backend=args.backend)
    progress = None if args.json else (lambda msg: print(f"measuring {msg}", file=sys.stderr))
    report = bench.run(
        model,
        rounds=args.rounds,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        progress=progress,
    )
    results = bench.check(report, {g.option: getattr(args, g.option) for g in bench.GATES})
    print(bench.to_json(report, results) if args.json else bench.format_table(report, results))
    return 0 if all(r.passed for r in results) else BENCH_GATE_FAILED


class _Terminated(BaseException):
    """SIGTERM during ``score``: unwinds like Ctrl-C, so the partial output is removed."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _score(args: argparse.Namespace) -> int:
    from .runtime import load
    from .score import score_file

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
    if not isinstance(session, dict):
        raise InputError(
            f"{source} must be a JSON object (one page view), got {type(session).__name__}"
        )
    return session


def _recommend(args: argparse.Namespace) -> int:
    from .runtime import load

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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reco-fast", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="data -> features -> training -> C -> verified artifact")
    b.add_argument("--data", help="page-view log CSV in the seed's schema (default: generate one)")
    b.add_argument("--catalog", help="product catalog CSV: product_id, category, price")
    b.add_argument("--out", default="artifacts/reco_model", help="artifact directory")
    b.add_argument(
        "--features",
        default="ranking",
        choices=["ranking", "seed"],
        help="feature set: ranking (seed + candidate, default) or seed (the 19 alone)",
    )
    b.add_argument("--data-dir", default="data", help="where the generated default data goes")
    b.add_argument("--seed", type=int, default=42, help="generator seed")
    b.add_argument("--threshold", type=float, default=0.7, help="high-confidence threshold")
    b.add_argument("-q", "--quiet", action="store_true", help="do not print the report")
    b.set_defaults(func=_build)

    i = sub.add_parser(
        "info", help="what an artifact holds: features, versions, metrics, checksums"
    )
    i.add_argument("artifact")
    i.set_defaults(func=_info)

    v = sub.add_parser("verify", help="re-check an artifact's checksums and golden outputs")
    v.add_argument("artifact")
    v.set_defaults(func=_verify)

    from .bench import DEFAULT_BATCH_SIZES, DEFAULT_ROUNDS, GATES
    from .runtime import BACKENDS

    be = sub.add_parser(
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
    be.add_argument("--json", action="store_true", help="print the results as JSON")
    for gate in GATES:
        be.add_argument(
            "--" + gate.option.replace("_", "-"),
            type=float,
            metavar=gate.unit.upper().replace("/", "_"),
            help=f"gate: {gate.help} must be <= this ({gate.unit})",
        )
    be.set_defaults(func=_bench)

    from .score import DEFAULT_CHUNKSIZE, ON_INVALID

    sc = sub.add_parser(
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

    r = sub.add_parser(
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except (
        InputError,
        ArtifactError,
        CompileError,
        ValueError,
        TypeError,
        OSError,
        ImportError,
    ) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"reco-fast {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    except KeyboardInterrupt:
        print(f"reco-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
