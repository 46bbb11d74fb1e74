"""``reco-fast bench``: the table, the gates and the exit status a deploy pipeline reads.

Small repeat counts: these check behaviour, not speed (benchmarks/ measures speed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reco_fast.tools import bench
from reco_fast.tools.cli import BENCH_GATE_FAILED, main
from tests.helpers import REPO

QUICK = ["--rounds", "30", "--batch-sizes", "1,10,100,10000", "--threads", "2"]
GENEROUS = [
    "--max-p50-us",
    "1e6",
    "--max-p99-us",
    "1e6",
    "--max-batch-ns",
    "1e7",
    "--max-recommend-us",
    "1e7",
    "--max-event-us",
    "1e7",
]


def test_bench_prints_the_table_and_passes_generous_gates(built, capsys):
    assert main(["bench", str(built.path), *QUICK, *GENEROUS]) == 0
    out = capsys.readouterr().out
    for key in (
        "single",
        "batch-1 ",
        "batch-10 ",
        "batch-100 ",
        "batch-10000 ",
        "batch-10000-t2",
        "recommend",
        "event+recommend",
    ):
        assert key in out, key
    assert "p50" in out and "p99" in out and "ns/row" in out
    assert built.model.backend in out
    assert "all 5 gates pass" in out
    assert "FAIL" not in out


def test_an_impossible_gate_exits_non_zero(built, capsys):
    rc = main(["bench", str(built.path), *QUICK, "--max-p50-us", "0.001", "--max-batch-ns", "1e7"])
    assert rc == BENCH_GATE_FAILED != 0
    out = capsys.readouterr().out
    assert "FAIL max-p50-us 0.001" in out
    assert "ok   max-batch-ns" in out
    assert "1 of 2 gates failed" in out


def test_no_gate_given_exits_zero(built, capsys):
    assert main(["bench", str(built.path), "--rounds", "5", "--batch-sizes", "1"]) == 0
    assert "gates:" not in capsys.readouterr().out


def test_json_output(built, capsys):
    rc = main(["bench", str(built.path), *QUICK, "--json", "--max-recommend-us", "0.001"])
    assert rc == BENCH_GATE_FAILED
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False
    assert data["backend"] == built.model.backend
    cases = {c["key"]: c for c in data["cases"]}
    assert {"single", "batch-1", "batch-10000", "recommend", "event+recommend"} <= set(cases)
    assert cases["batch-10000"]["unit"] == "ns/row" and cases["single"]["unit"] == "us"
    assert all(0 < c["p50"] <= c["p99"] for c in data["cases"])
    assert cases["single"]["rounds"] == 30
    (gate,) = data["gates"]
    assert gate["gate"] == "max_recommend_us" and gate["passed"] is False
    assert gate["measured"] == cases["recommend"]["p50"]
    assert data["machine"]["usable_cores"] >= 1 and data["machine"]["cpu"]


def test_a_gate_on_a_case_the_artifact_lacks_fails(seed_built, capsys):
    """A seed-feature model cannot recommend: a recommend gate cannot pass, so it fails."""
    rc = main(["bench", str(seed_built.path), "--rounds", "5", "--max-recommend-us", "1e9"])
    assert rc == BENCH_GATE_FAILED
    out = capsys.readouterr().out
    assert "not measured" in out and "recommend " not in out.split("gates:")[0]


def test_a_missing_artifact_is_an_error_not_a_gate(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope"), "--max-p50-us", "5"]) == 1
    assert "reco-fast bench: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--max-p50-us", "fast"], ["--batch-sizes", "1,x"], ["--batch-sizes", "0"], ["--rounds", "0"]],
)
def test_bad_arguments_are_usage_errors(built, args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(built.path), *args])
    assert exc.value.code == 2
    assert args[0] in capsys.readouterr().err


def test_help():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "reco_fast.tools.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    for option in ("--max-p50-us", "--max-p99-us", "--max-batch-ns", "--max-recommend-us"):
        assert option in r.stdout
    assert "exit status" in r.stdout


def test_percentiles_and_time_calls():
    assert bench.percentiles(list(range(1, 102))) == (51.0, 100.0)
    samples = bench.time_calls(lambda: None, 50, warmup=5)
    assert samples.shape == (50,) and (samples >= 0).all()
    with pytest.raises(ValueError):
        bench.time_calls(lambda: None, 0)
