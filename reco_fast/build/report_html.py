"""``report.html``: the build report as one self-contained page, with plots.

Written by the build beside ``report.md``. Everything is inline: plots are PNGs
drawn with matplotlib (Agg backend) and embedded as ``data:`` URIs, the style
is a ``<style>`` block, and nothing is fetched from the network. matplotlib is
optional (the ``report`` extra): without it the page has the same tables and a
note instead of the plots.

Build-time only. The numbers come from the report dict (``report.json``) and,
for the curves, from :func:`curves` (the test labels and scikit-learn's
probabilities), computed by the pipeline and passed in.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["curves", "render_html"]

MAX_CURVE_POINTS = 400
SWEEP = np.round(np.arange(0.0, 1.0001, 0.01), 2)
CALIBRATION_BINS = 10


def _thin(*columns: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """At most ``limit`` evenly spaced points of a curve (first and last kept)."""
    n = len(columns[0])
    idx: Any = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else []
    return [np.asarray(c, dtype=float)[idx].tolist() for c in columns]


def curves(y_test: Any, proba: Any, threshold: float = 0.7) -> dict[str, Any]:
    """The points behind every plot: ROC, precision-recall, calibration, threshold sweep."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    y = np.asarray(y_test).astype(int)
    p = np.asarray(proba, dtype=float)
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    order = np.argsort(recall, kind="stable")
    roc_x, roc_y = _thin(fpr, tpr)
    pr_x, pr_y = _thin(recall[order], precision[order])

    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins = np.clip(np.digitize(p, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    calibration = []
    for b in range(CALIBRATION_BINS):
        mask = bins == b
        if mask.any():
            calibration.append(
                {
                    "bin": [float(edges[b]), float(edges[b + 1])],
                    "mean_predicted": float(p[mask].mean()),
                    "click_rate": float(y[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    sweep = []
    for t in SWEEP.tolist():
        shown = p >= t
        n = int(shown.sum())
        sweep.append(
            {
                "threshold": t,
                "shown": n,
                "share": n / len(p) if len(p) else 0.0,
                "ctr": float(y[shown].mean()) if n else None,
            }
        )
    return {
        "roc": {"fpr": roc_x, "tpr": roc_y},
        "pr": {
            "recall": pr_x,
            "precision": pr_y,
            "average_precision": float(average_precision_score(y, p)),
            "base_rate": float(y.mean()) if len(y) else 0.0,
        },
        "calibration": calibration,
        "sweep": sweep,
        "threshold": threshold,
        "n": len(p),
    }


# ---- plots -----------------------------------------------------------------------------------

BLUE, ORANGE, GREY, GREEN = "#1f6feb", "#d9730d", "#8c959f", "#2da44e"


def _figure_factory() -> Any | None:
    """A function making a matplotlib ``Figure`` with its own Agg canvas, or None.

    Figures are made directly, never through pyplot, so building a report neither
    switches the caller's backend nor registers figures in pyplot's global state.
    """
    try:
        import matplotlib  # noqa: F401  (absent -> ImportError before any submodule)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    def figure(figsize: tuple[float, float], dpi: int) -> Any:
        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        return fig

    return figure


def _png(figure: Any, draw: Callable[[Any], None], size: tuple[float, float] = (5.2, 3.6)) -> str:
    fig = figure(figsize=size, dpi=110)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _finish(ax: Any, title: str, legend: str | None = None) -> None:
    """The report's plot style: ``title``, a frameless legend at ``legend`` (a matplotlib
    location) when given, a light grid and no top or right spine."""
    ax.set_title(title)
    if legend is not None:
        ax.legend(loc=legend, frameon=False)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _plots(r: dict[str, Any], c: dict[str, Any] | None, figure: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    t = r["high_confidence"]["threshold"]
    if c is not None:

        def roc(fig: Any) -> None:
            ax = fig.add_subplot()
            ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], color=BLUE, lw=2)
            ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1, label="chance")
            ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1))
            ax.set_ylim(0, 1.01)
            _finish(ax, f"ROC (AUC {r['metrics']['auc']:.3f})", legend="lower right")

        def pr(fig: Any) -> None:
            ax = fig.add_subplot()
            ax.plot(c["pr"]["recall"], c["pr"]["precision"], color=BLUE, lw=2)
            ax.axhline(c["pr"]["base_rate"], color=GREY, ls="--", lw=1, label="click rate")
            ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1))
            ax.set_ylim(0, 1.01)
            _finish(
                ax,
                f"Precision-recall (AP {c['pr']['average_precision']:.3f})",
                legend="upper right",
            )

        def calibration(fig: Any) -> None:
            ax = fig.add_subplot()
            cal = c["calibration"]
            ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1, label="perfectly calibrated")
            ax.plot(
                [b["mean_predicted"] for b in cal],
                [b["click_rate"] for b in cal],
                marker="o",
                color=BLUE,
                lw=2,
                label="model",
            )
            ax.set(xlabel="mean predicted probability", ylabel="observed click rate")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            _finish(ax, "Calibration (test split, 10 bins)", legend="upper left")

        def sweep(fig: Any) -> None:
            ax = fig.add_subplot()
            pts = [s for s in c["sweep"] if s["ctr"] is not None]
            ax.plot(
                [s["threshold"] for s in pts],
                [s["ctr"] for s in pts],
                color=BLUE,
                lw=2,
                label="click rate of shown",
            )
            ax.plot(
                [s["threshold"] for s in c["sweep"]],
                [s["share"] for s in c["sweep"]],
                color=ORANGE,
                lw=2,
                label="share of page views shown",
            )
            ax.axvline(t, color="#cf222e", ls="--", lw=1.2)
            ax.annotate(
                f"cut {t:g}",
                (t, 0.97),
                xytext=(4, 0),
                textcoords="offset points",
                color="#cf222e",
                va="top",
            )
            ax.set(xlabel="confidence threshold (show if p >= threshold)", ylabel="rate")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            _finish(ax, "Click rate and volume by threshold", legend="lower left")

        out["roc"] = _png(figure, roc)
        out["pr"] = _png(figure, pr)
        out["calibration"] = _png(figure, calibration)
        out["sweep"] = _png(figure, sweep)

    def importance(fig: Any) -> None:
        ax = fig.add_subplot()
        top = r["top_features"][::-1]
        ax.barh([f["feature"] for f in top], [f["importance"] for f in top], color=BLUE)
        ax.set(xlabel="importance (impurity decrease)")
        _finish(ax, "Top features")

    out["importance"] = _png(figure, importance, (6.4, 3.8))

    def rates(by: str, title: str) -> Callable[[Any], None]:
        def draw(fig: Any) -> None:
            ax = fig.add_subplot()
            rows = r["click_rate_by"][by]
            ax.bar([x[by] for x in rows], [x["rate"] for x in rows], color=BLUE)
            ax.axhline(r["dataset"]["click_rate"], color=GREY, ls="--", lw=1, label="overall")
            ax.set(ylabel="click rate")
            _finish(ax, title, legend="upper right")

        return draw

    out["device"] = _png(figure, rates("device_type", "Click rate by device"), (4.6, 3.2))
    out["traffic"] = _png(
        figure, rates("traffic_source", "Click rate by traffic source"), (4.6, 3.2)
    )

    def speed(fig: Any) -> None:
        ax = fig.add_subplot()
        rows = r["inference_speed"]
        x = [s["batch"] for s in rows]
        ax.plot(x, [s["sklearn_ms_per_row"] * 1e3 for s in rows], "o-", color=GREY, label="sklearn")
        ax.plot(
            x, [s["compiled_ms_per_row"] * 1e3 for s in rows], "o-", color=GREEN, label="compiled"
        )
        ax.set(xscale="log", yscale="log", xlabel="batch size (rows)", ylabel="µs per row")
        _finish(ax, "Latency per row (median)", legend="best")

    out["speed"] = _png(figure, speed, (5.2, 3.4))
    return out


# ---- HTML ------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:#1f2328;max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;
margin-top:1.8em}.sub{color:#59636e}
.kpis{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.kpi{border:1px solid #d0d7de;border-radius:6px;padding:.5em .9em;min-width:8em}
.kpi b{display:block;font-size:1.35em}.kpi span{color:#59636e;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.grid>div{flex:1 1 420px}img{max-width:100%;height:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
tr.cut td{background:#fff8c5;font-weight:600}
.note{background:#f6f8fa;border-left:4px solid #d0d7de;padding:.5em .9em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, fmt: str | None) -> str:
    if v is None:
        return "n/a"
    return format(v, fmt) if fmt else str(v)


def _table(
    rows: Sequence[dict[str, Any]],
    formats: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    highlight: Callable[[dict[str, Any]], bool] | None = None,
) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"
    formats, headers = formats or {}, headers or {}
    cols = list(rows[0])
    head = "".join(f"<th>{_e(headers.get(k, k))}</th>" for k in cols)
    body = "".join(
        f"<tr{' class=cut' if highlight and highlight(r) else ''}>"
        + "".join(f"<td>{_e(_fmt(r[k], formats.get(k)))}</td>" for k in cols)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(plots: dict[str, str], key: str, alt: str) -> str:
    if key not in plots:
        return ""
    return f'<img src="data:image/png;base64,{plots[key]}" alt="{_e(alt)}">'


def render_html(r: dict[str, Any], curve_points: dict[str, Any] | None = None) -> str:
    """The report dict (and optionally :func:`curves`) as one self-contained HTML page."""
    figure = _figure_factory()
    plots = _plots(r, curve_points, figure) if figure is not None else {}
    d, m, b, hc = r["dataset"], r["metrics"], r["business_impact"], r["high_confidence"]
    t = hc["threshold"]
    pct = ".1%"
    kpis = [
        (f"{m['auc']:.3f}", "AUC-ROC"),
        (f"{m['accuracy']:.3f}", "accuracy"),
        (f"{hc['ctr']:.1%}", f"click rate at p >= {t:g}"),
        (f"{b['baseline_ctr']:.1%}", "baseline click rate"),
        (f"{r['compiled_vs_sklearn_max_abs_diff']:.2g}", "max |compiled - sklearn|"),
        (f"${b['incremental_revenue_per_year']:,.0f}", "incremental revenue / year"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>reco_fast build report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Real-time product recommendations: build report</h1>",
        f'<p class="sub">Data: <code>{_e(r["source"])}</code> &middot; '
        f"{d['interactions']:,} page views, {d['sessions']:,} sessions, "
        f"{d['customers']:,} customers &middot; {_e(r['feature_set'])} feature set "
        f"({len(r['features'])} features) &middot; test split {r['split']['test']:,} rows</p>",
        '<div class="kpis">'
        + "".join(f"<div class=kpi><b>{_e(v)}</b><span>{_e(k)}</span></div>" for v, k in kpis)
        + "</div>",
    ]
    if figure is None:
        parts.append(
            '<p class="note">Plots omitted: matplotlib is not installed in the environment '
            "that built this artifact (<code>pip install 'reco_fast[report]'</code>). "
            "The tables below hold the same numbers.</p>"
        )

    parts += [
        "<h2>Model quality</h2>",
        f"<p>Accuracy {m['accuracy']:.4f}, AUC-ROC {m['auc']:.4f}, precision {m['precision']:.3f}, "
        f"recall {m['recall']:.3f}, F1 {m['f1']:.3f} (at p >= 0.5, on the test split).</p>",
        '<div class="grid"><div>',
        _img(plots, "roc", "ROC curve"),
        "</div><div>",
        _img(plots, "pr", "precision-recall curve"),
        "</div></div>",
        "<h3>Calibration</h3>",
        '<div class="grid"><div>',
        _img(plots, "calibration", "calibration curve"),
        "</div><div>",
    ]
    if curve_points is not None:
        parts.append(
            _table(
                [
                    {
                        "bin": f"{c['bin'][0]:.1f}-{c['bin'][1]:.1f}",
                        "mean predicted": c["mean_predicted"],
                        "click rate": c["click_rate"],
                        "page views": c["count"],
                    }
                    for c in curve_points["calibration"]
                ],
                {"mean predicted": ".3f", "click rate": ".3f", "page views": ","},
            )
        )
    cm = m["confusion_matrix"]
    parts += [
        "</div></div>",
        "<h3>Confusion matrix (p >= 0.5)</h3>",
        _table(
            [
                {
                    "": "actual: no click",
                    "predicted: no click": cm["tn"],
                    "predicted: click": cm["fp"],
                },
                {
                    "": "actual: click",
                    "predicted: no click": cm["fn"],
                    "predicted: click": cm["tp"],
                },
            ],
            {"predicted: no click": ",", "predicted: click": ","},
        ),
        f"<h2>Click rate and volume by confidence threshold (cut at {t:g})</h2>",
        f"<p>Only recommendations with p >= {t:g} are shown: {hc['shown']:,} of "
        f"{r['split']['test']:,} test page views, of which {hc['clicks']:,} were clicked "
        f"(click rate {hc['ctr']:.1%}).</p>",
        '<div class="grid"><div>',
        _img(plots, "sweep", "click rate and volume by threshold"),
        "</div><div>",
        _table(
            r["thresholds"],
            {"ctr": pct, "shown": ",", "clicks": ","},
            {"ctr": "click rate"},
            highlight=lambda row: abs(row["threshold"] - t) < 1e-9,
        ),
        "</div></div>",
        "<h2>Feature importances</h2>",
        '<div class="grid"><div>',
        _img(plots, "importance", "feature importances"),
        "</div><div>",
        _table(r["top_features"], {"importance": ".3f"}),
        "</div></div>",
        "<h2>Click rates by device and traffic source</h2>",
        '<div class="grid"><div>',
        _img(plots, "device", "click rate by device"),
        _table(r["click_rate_by"]["device_type"], {"rate": pct, "clicks": ",", "count": ","}),
        "</div><div>",
        _img(plots, "traffic", "click rate by traffic source"),
        _table(r["click_rate_by"]["traffic_source"], {"rate": pct, "clicks": ",", "count": ","}),
        "</div></div>",
        "<h3>Model on the test split, by segment</h3>",
        '<div class="grid"><div>',
        _table(r["segments"]["device_type"], {"actual_ctr": ".3f", "avg_prob": ".3f"}),
        "</div><div>",
        _table(r["segments"]["traffic_source"], {"actual_ctr": ".3f", "avg_prob": ".3f"}),
        "</div></div>",
        f"<h2>Business impact ({b['daily_sessions']:,} daily sessions x "
        f"{b['recommendations_per_session']} recommendations x ${b['revenue_per_click']:g} "
        "per click)</h2>",
        _table(
            [
                {
                    "": "baseline",
                    "click rate": b["baseline_ctr"],
                    "clicks / day": b["baseline_clicks_per_day"],
                    "revenue / day": b["baseline_revenue_per_day"],
                    "revenue / year": b["baseline_revenue_per_day"] * 365,
                },
                {
                    "": f"real-time ML (p >= {t:g})",
                    "click rate": b["model_ctr"],
                    "clicks / day": b["model_clicks_per_day"],
                    "revenue / day": b["model_revenue_per_day"],
                    "revenue / year": b["model_revenue_per_day"] * 365,
                },
                {
                    "": "incremental",
                    "click rate": b["model_ctr"] - b["baseline_ctr"],
                    "clicks / day": b["incremental_clicks_per_day"],
                    "revenue / day": b["incremental_revenue_per_day"],
                    "revenue / year": b["incremental_revenue_per_year"],
                },
            ],
            {
                "click rate": pct,
                "clicks / day": ",.0f",
                "revenue / day": ",.0f",
                "revenue / year": ",.0f",
            },
        ),
        f"<p>Click rate {b['improvement']:+.1%} relative to the baseline; "
        + (
            f"ROI vs baseline {b['roi_vs_baseline']:.2f}x.</p>"
            if b["roi_vs_baseline"] is not None
            else "ROI vs baseline n/a.</p>"
        ),
        "<h2>Compiled model vs scikit-learn</h2>",
        f"<p>Largest difference between the compiled model and scikit-learn's "
        f"<code>predict_proba</code> on the {r['split']['test']:,} test rows: "
        f"<b>{r['compiled_vs_sklearn_max_abs_diff']:.3g}</b> (every build fails above 1e-12).</p>",
        '<div class="grid"><div>',
        _img(plots, "speed", "latency per row"),
        "</div><div>",
        _table(
            r["inference_speed"],
            {
                "sklearn_ms_per_row": ".5f",
                "compiled_ms_per_row": ".5f",
                "compiled_per_second": ",.0f",
                "speedup": ",.0f",
            },
            {
                "sklearn_ms_per_row": "sklearn ms/row",
                "compiled_ms_per_row": "compiled ms/row",
                "compiled_per_second": "compiled rows/s",
                "speedup": "speedup",
            },
        ),
        "</div></div>",
        "<h2>Model</h2>",
        "<p>GradientBoostingClassifier("
        + _e(", ".join(f"{k}={v}" for k, v in r["model"]["params"].items()))
        + f"), trained on {r['split']['train']:,} rows in {r['training_seconds']:.2f} s.</p>",
        "<p>Features: " + ", ".join(f"<code>{_e(f)}</code>" for f in r["features"]) + "</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
