"""benchmarks/families_report.py: the README's model-family table comes from the run's JSON.

A small pytest-benchmark JSON, shaped as benchmarks/test_families.py writes it, is
rendered; every figure in the table must be the one recorded (nothing typed by hand),
a peer that does not take a family is "n/a", one that was skipped is "not run".
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from benchmarks.families_report import render


def _bench(family: str, case: str, impl: str, median_ns: float, diff: float, **kw: Any) -> dict:
    rows = 1 if case == "single" else 10_000
    info = {
        "suite": "families",
        "family": family,
        "title": f"{family} title",
        "reference": "predict_proba",
        "case": case,
        "impl": impl,
        "rows": rows,
        "threads": 1,
        "trees": 100,
        "features": 24,
        "eval_rows": 10_000,
        "impls": kw.pop("impls"),
        "max_abs_diff": diff,
        "median_ns": median_ns,
        "p99_ns": median_ns * 2,
        "rounds": kw.pop("rounds"),
        **kw,
    }
    return {"group": f"{family}/{case}", "extra_info": info, "stats": {"rounds": info["rounds"]}}


def _data() -> dict[str, Any]:
    gb = ["library", "reco_fast", "treelite.gtil", "onnxruntime"]
    lgbm = [*gb[:3], "lleaves", "onnxruntime"]
    reco = {"reco_fast_backend": "flat-test", "tolerance": 1e-12}
    benches = [
        _bench("gb", "single", "library", 212_000.0, 0.0, impls=gb, rounds=400),
        _bench("gb", "single", "reco_fast", 4_980.0, 4.4e-16, impls=gb, rounds=3000, **reco),
        _bench("gb", "single", "onnxruntime", 7_480.0, 1.8e-7, impls=gb, rounds=3000),
        _bench("gb", "batch-10000", "library", 3_216.0, 0.0, impls=gb, rounds=7),
        _bench("gb", "batch-10000", "reco_fast", 127.0, 4.4e-16, impls=gb, rounds=200, **reco),
        _bench("gb", "batch-10000", "onnxruntime", 2_525.0, 1.8e-7, impls=gb, rounds=20),
        _bench("lgbm", "single", "library", 453_000.0, 0.0, impls=lgbm, rounds=500),
        _bench("lgbm", "single", "reco_fast", 4_530.0, 0.0, impls=lgbm, rounds=3000, **reco),
        _bench("lgbm", "batch-10000", "reco_fast", 8_717.0, 0.0, impls=lgbm, rounds=5, **reco),
    ]
    return {
        "datetime": "2026-11-29T23:17:05.123456+00:00",
        "machine_info": {"reco_fast_bench": {"cpu": "Test CPU", "peers": {"lleaves": "9.9"}}},
        "benchmarks": benches,
    }


def _row(text: str, start: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(start))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def test_every_figure_comes_from_the_json() -> None:
    text = render(_data())
    assert "Measured 2026-11-29 23:17:05 UTC on: Test CPU" in text
    assert "peers: lleaves 9.9" in text
    assert "400 to 3,000 rounds" in text and "5 to 200 rounds" in text
    exact = _row(text, "| gb title")
    assert exact[2:] == ["reference", "4.4e-16", "not run", "n/a", "1.8e-07", ""]
    assert "reco_fast backend flat-test" in exact[0] and "≤ 1e-12" in exact[1]
    lines = text.splitlines()
    i = lines.index(next(ln for ln in lines if ln.startswith("| gb title")))
    assert _row(lines[i + 1], "|")[1:] == [
        "one row: p50, µs",
        "212",
        "4.98",
        "not run",
        "n/a",
        "7.48",
        "42.6x",
    ]
    assert _row(lines[i + 2], "|")[2:] == ["3,216", "127", "not run", "n/a", "2,525", "25.3x"]
    # LightGBM: lleaves applies but was not run; the batch library time is absent
    exact = _row(text, "| lgbm title")
    assert exact[2:] == ["reference", "0", "not run", "not run", "not run", ""]
    i = lines.index(next(ln for ln in lines if ln.startswith("| lgbm title")))
    assert _row(lines[i + 2], "|")[2:] == ["–", "8,717", "not run", "not run", "not run", "–"]


def test_a_json_without_family_benchmarks_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"test_families\.py"):
        render({"benchmarks": [{"group": "single", "extra_info": {"impl": "reco_fast"}}]})
