"""``reco-fast`` subcommands, run as a user runs them: a child process per call.

Every subcommand has ``--help``; every failure exits non-zero with one line on
stderr (no traceback); ``score`` streams a file in chunks into a CSV that keeps
each input line and adds ``click_probability``; ``recommend`` prints JSON.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reco_fast
from reco_fast.artifact import write_metadata
from reco_fast.tools.cli import MAX_ERROR_CHARS, error_line, info_summary
from reco_fast.tools.score import supports_on_invalid
from tests.helpers import REPO, run_python, subprocess_env

SUBCOMMANDS = ("build", "verify", "info", "bench", "score", "recommend")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reco_fast.tools.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        input=stdin,
        timeout=300,
    )


def run_build_model(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python build_model.py ARGS`` as the README runs it."""
    return subprocess.run(
        [sys.executable, str(REPO / "build_model.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
        **kwargs,
    )


def run_code(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS``: the CLI with something patched first."""
    return run_python(
        code,
        *map(str, args),
        timeout=300,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], command: str) -> str:
    """The failure contract: non-zero exit, no traceback, one 'reco-fast CMD: error:' line."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("reco-fast ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"reco-fast {command}: error: "), proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def session_json(built) -> dict:
    row = built.log[built.log["prev_product_1"] != "NONE"].iloc[3]
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


# ---- --help and the shared error contract ----------------------------------------------------


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: reco-fast {command}")


def test_top_level_help_lists_every_subcommand():
    proc = run("--help")
    assert proc.returncode == 0
    for command in SUBCOMMANDS:
        assert command in proc.stdout


def test_verify_and_info(built):
    proc = run("verify", built.path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ")
    proc = run("info", built.path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    expected = dict(built.model.metadata)
    del expected["golden"]
    assert info == expected


def test_info_prints_a_short_summary(built):
    proc = run("info", built.path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    meta, report = built.metadata, built.result.report
    assert len(text.splitlines()) <= 25
    assert "GradientBoostingClassifier, 100 trees of depth 4" in text
    flat = " ".join(text.split())  # undo the line wrapping
    assert (
        f"{len(meta['feature_names'])} (ranking set): " + ", ".join(meta["feature_names"]) in flat
    )
    assert f"AUC {report['metrics']['auc']:.4f}" in text
    assert f"CTR at >= 0.7: {report['high_confidence']['ctr']:.1%}" in text
    assert f"backend:    {meta['backend']}" in text
    assert meta["created"] in text
    for package in ("scikit-learn", "treelite", "tl2cgen", "reco_fast"):
        assert f"{package} {meta['versions'][package]}" in flat
    assert "{" not in text  # not JSON


def test_info_never_loads_the_native_library(built, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built.path, art)
    (art / built.metadata["library"]).write_bytes(b"garbage, not a shared library")
    proc = run("info", art)
    assert proc.returncode == 0, proc.stderr
    assert "AUC" in proc.stdout and "reco-fast verify" in proc.stdout
    proc = run("info", art, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["library"] == built.metadata["library"]
    assert "does not match its checksum" in one_line_error(run("verify", art), "verify")


def test_info_without_a_report(built, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built.path, art)
    (art / "report.json").write_text("[1, 2")  # damaged
    proc = run("info", art)
    assert proc.returncode == 0, proc.stderr
    assert "report:     unreadable" in proc.stdout and "AUC" not in proc.stdout


def test_version():
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"reco-fast {reco_fast.__version__}"


@pytest.mark.parametrize("prog", ["reco-fast build", "build_model.py"])
def test_build_help_names_its_program_and_shows_defaults(prog):
    proc = run("build", "--help") if prog == "reco-fast build" else run_build_model("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog} ")
    flat = " ".join(proc.stdout.split())
    for default in ("artifacts/reco_model", "ranking", "42", "0.7", "data"):
        assert f"(default: {default})" in flat
    assert "-v, --verbose" in flat


# A build that fails at once (its data file is missing): cheap, and it shows the error path.
@pytest.mark.parametrize(
    "command",
    [
        ["reco-fast", "build", "-v"],
        ["reco-fast", "-v", "build"],
        ["build_model.py", "-v"],
        ["reco-fast", "build"],
        ["build_model.py"],
    ],
)
def test_verbose_before_or_after_the_subcommand(command, tmp_path):
    args = ["--data", tmp_path / "missing.csv", "--out", tmp_path / "a", "-q"]
    if command[0] == "build_model.py":
        proc, prefix = run_build_model(*command[1:], *args), "build_model.py: error: "
    else:
        proc, prefix = run(*command[1:], *args), "reco-fast build: error: "
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and "missing.csv" in errors[0], proc.stderr
    if "-v" in command:  # debug logging: the traceback of the error
        assert "Traceback (most recent call last)" in proc.stderr
    else:
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["verify", "info", "score", "recommend", "bench"])
def test_a_missing_artifact_is_a_one_line_error(command, tmp_path):
    extra = {
        "score": ["--input", tmp_path / "x.csv", "--output", tmp_path / "y.csv"],
        "recommend": ["--session", "{}"],
    }.get(command, [])
    proc = run(command, tmp_path / "nothing", *extra)
    assert "is not a directory" in one_line_error(proc, command)


def test_build_with_a_missing_data_file_is_a_one_line_error(tmp_path):
    proc = run("build", "--data", tmp_path / "missing.csv", "--out", tmp_path / "a", "-q")
    assert "missing.csv" in one_line_error(proc, "build")
    assert not (tmp_path / "a").exists()


# ---- score -----------------------------------------------------------------------------------


def test_score_streams_in_chunks_and_matches_the_model(built, small_csv, tmp_path):
    out = tmp_path / "scored.csv"
    proc = run("score", built.path, "--input", small_csv, "--output", out, "--chunksize", "700")
    assert proc.returncode == 0, proc.stderr
    assert "scored 3,000 rows (100%)" in proc.stderr
    assert "Traceback" not in proc.stderr
    lines_in = small_csv.read_text().splitlines()
    lines_out = out.read_text().splitlines()
    assert lines_out[0] == lines_in[0] + ",click_probability"
    assert len(lines_out) == len(lines_in)
    for a, b in zip(lines_in[1:], lines_out[1:], strict=True):  # every input line, verbatim
        assert b.rsplit(",", 1)[0] == a
    scored = pd.read_csv(out)
    expected = built.model.predict_proba(pd.read_csv(small_csv))
    assert np.array_equal(scored["click_probability"].to_numpy(), expected)  # exact: repr


def test_score_keeps_quoted_fields_that_span_lines(built, small_csv, tmp_path):
    frame = pd.read_csv(small_csv, nrows=40)
    frame["session_id"] = [f'S "{i}"\nsecond line, with comma' for i in range(40)]
    src, out = tmp_path / "quoted.csv", tmp_path / "scored.csv"
    frame.to_csv(src, index=False)
    proc = run("score", built.path, "--input", src, "--output", out, "--chunksize", "7", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    scored = pd.read_csv(out)
    assert scored["session_id"].tolist() == frame["session_id"].tolist()
    assert np.array_equal(scored["click_probability"].to_numpy(), built.model.predict_proba(frame))


@pytest.mark.parametrize(
    "column, cell, message",
    [
        ("scroll_depth", "1.5", "'scroll_depth' must be <= 1, got 1.5 (row 2345)"),
        (
            "time_on_page_sec",
            "abc",
            "'time_on_page_sec' must be a number, got str 'abc' (row 2345)",
        ),
        ("device_type", "Fridge", "(row 2345)"),
    ],
)
def test_score_names_the_bad_row_counted_from_the_start_of_the_file(
    built, small_csv, tmp_path, column, cell, message
):
    frame = pd.read_csv(small_csv, dtype=str, keep_default_na=False)
    frame.loc[2345, column] = cell
    src, out = tmp_path / "bad.csv", tmp_path / "scored.csv"
    frame.to_csv(src, index=False)
    proc = run("score", built.path, "--input", src, "--output", out, "--chunksize", "1000")
    line = one_line_error(proc, "score")
    assert message in line
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no partial output left behind


def test_score_on_invalid_nan(built, small_csv, tmp_path):
    frame = pd.read_csv(small_csv, dtype=str, keep_default_na=False).head(500)
    frame.loc[123, "time_on_page_sec"] = "abc"
    src, out = tmp_path / "bad.csv", tmp_path / "scored.csv"
    frame.to_csv(src, index=False)
    proc = run("score", built.path, "--input", src, "--output", out, "--on-invalid", "nan")
    if not supports_on_invalid(built.model):
        assert "--on-invalid nan" in one_line_error(proc, "score")
        return
    assert proc.returncode == 0, proc.stderr
    assert "1 invalid" in proc.stderr
    scored = pd.read_csv(out)
    p = scored["click_probability"].to_numpy()
    assert math.isnan(p[123]) and np.isfinite(np.delete(p, 123)).all()
    good = pd.read_csv(small_csv).head(500).drop(index=123)
    assert np.array_equal(np.delete(p, 123), built.model.predict_proba(good))


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing-input", "no such file"),
        ("missing-column", "missing column 'scroll_depth'"),
        ("empty", "empty"),
        ("header-only", "no rows"),
        ("parquet-output", "written as CSV"),
    ],
)
def test_score_errors(built, small_csv, tmp_path, problem, expected):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    text = small_csv.read_text()
    if problem == "missing-column":
        pd.read_csv(small_csv).drop(columns="scroll_depth").to_csv(src, index=False)
    elif problem == "empty":
        src.write_text("")
    elif problem == "header-only":
        src.write_text(text.splitlines(keepends=True)[0])
    elif problem == "parquet-output":
        src.write_text(text)
        out = tmp_path / "out.parquet"
    proc = run("score", built.path, "--input", src, "--output", out)
    assert expected in one_line_error(proc, "score")
    assert not out.exists()


def test_score_bad_arguments_exit_2(built, small_csv, tmp_path):
    out = tmp_path / "o.csv"
    for bad in (["--chunksize", "0"], ["--on-invalid", "skip"]):
        proc = run("score", built.path, "--input", small_csv, "--output", out, *bad)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr


def test_score_parquet(built, small_csv, tmp_path):
    src, out = tmp_path / "in.parquet", tmp_path / "out.csv"
    if importlib.util.find_spec("pyarrow") is None:
        src.write_bytes(b"PAR1")
        proc = run("score", built.path, "--input", src, "--output", out)
        assert "needs pyarrow" in one_line_error(proc, "score")
        return
    frame = pd.read_csv(small_csv, dtype={"current_product_id": str})
    frame.to_parquet(src)
    proc = run("score", built.path, "--input", src, "--output", out, "--chunksize", "999")
    assert proc.returncode == 0, proc.stderr
    scored = pd.read_csv(out)
    assert np.array_equal(scored["click_probability"].to_numpy(), built.model.predict_proba(frame))


# ---- recommend -------------------------------------------------------------------------------


def _expected(built, session, k=3, threshold=None):
    recs = built.model.recommend(session, k=k, threshold=threshold)
    return [
        {"product_id": r.product_id, "probability": r.probability, "reason": r.reason} for r in recs
    ]


def test_recommend_inline_json_file_and_stdin(built, session_json, tmp_path):
    path = tmp_path / "session.json"
    path.write_text(json.dumps(session_json))
    for args, stdin in (
        (["--session", json.dumps(session_json)], None),
        (["--session", f"@{path}"], None),
        (["--session", "@-"], json.dumps(session_json)),
    ):
        proc = run("recommend", built.path, *args, "-k", "5", "--threshold", "0.2", stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["k"] == 5 and got["threshold"] == 0.2
        assert got["recommendations"] == _expected(built, session_json, 5, 0.2)
        assert got["recommendations"], "a low threshold should recommend something"


def test_recommend_defaults_to_the_artifacts_threshold(built, session_json):
    proc = run("recommend", built.path, "--session", json.dumps(session_json))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["threshold"] == built.model.threshold == 0.7
    assert got["recommendations"] == _expected(built, session_json)
    assert len(got["recommendations"]) <= 3


@pytest.mark.parametrize(
    "session, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"current_product_id": "PROD0001"}', "missing field"),
        ("@/nonexistent/session.json", "cannot read the session"),
    ],
)
def test_recommend_errors(built, session, expected):
    proc = run("recommend", built.path, "--session", session)
    assert expected in one_line_error(proc, "recommend")


def test_recommend_bad_k_and_threshold(built, session_json):
    s = json.dumps(session_json)
    assert "k must be" in one_line_error(
        run("recommend", built.path, "--session", s, "-k", "-1"), "recommend"
    )
    assert "threshold must be" in one_line_error(
        run("recommend", built.path, "--session", s, "--threshold", "1.5"), "recommend"
    )


def test_help_mentions_the_output_column_and_progress():
    text = run("score", "--help").stdout
    assert "click_probability" in text and "stderr" in text
    assert "@file.json" in run("recommend", "--help").stdout


def test_score_output_is_readable_by_csv_module(built, small_csv, tmp_path):
    out = tmp_path / "scored.csv"
    assert run("score", built.path, "--input", small_csv, "--output", out, "-q").returncode == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "click_probability"
    assert all(len(r) == len(rows[0]) for r in rows)
    assert Path(out).stat().st_mode & 0o044  # readable like a normal file, not mkstemp's 0600


def test_score_without_pandas_is_a_one_line_error(built, small_csv, tmp_path):
    code = (
        "import sys; sys.modules['pandas'] = None; from reco_fast.tools.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "o.csv"
    args = ["score", str(built.path), "--input", str(small_csv), "--output", str(out)]
    proc = run_python(
        code,
        *args,
    )
    assert "needs pandas" in one_line_error(proc, "score")
    assert not out.exists()


# ---- score: resources ------------------------------------------------------------------------
def _stray_quote_csv(small_csv: Path, path: Path, row: int, copies: int = 1) -> None:
    """small_csv (repeated ``copies`` times) with a '"' opening data row ``row``'s
    session_id and never closed."""
    lines = small_csv.read_text().splitlines(keepends=True)
    body = lines[1:] * copies
    body[row] = '"' + body[row]
    path.write_text(lines[0] + "".join(body))


def test_score_stray_quote_reads_a_bounded_amount(built, small_csv, tmp_path, monkeypatch):
    """A quote that opens a field and is never closed made score read the rest of the
    file into one block (693 MB against 143 MB on a large file): a record may now span
    at most MAX_RECORD_BYTES past its block, then the row is named."""
    import reco_fast.tools.score as score

    src, out = tmp_path / "stray.csv", tmp_path / "scored.csv"
    _stray_quote_csv(small_csv, src, row=1234)
    monkeypatch.setattr(score, "MAX_RECORD_BYTES", 20_000, raising=False)
    sizes: list[int] = []
    real = pd.read_csv

    def spy(data, *args, **kwargs):
        sizes.append(len(data.getvalue()))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", spy)
    with pytest.raises(score.InputError, match="data row 1,234 opens a quoted field") as info:
        score.score_file(built.model, src, out, chunksize=100, progress=None)
    assert info.value.rows == (1234,)
    assert str(src) in str(info.value)
    block = max(len(line) for line in src.read_bytes().splitlines(True)) * 100
    assert max(sizes) <= block  # blocks before the stray quote only: nothing larger was parsed
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["stray.csv"]


def test_score_stray_quote_is_a_one_line_error_naming_the_row(built, small_csv, tmp_path):
    src, out = tmp_path / "stray.csv", tmp_path / "scored.csv"
    _stray_quote_csv(small_csv, src, row=2500, copies=5)  # 1.5 MB after the quote
    proc = run("score", built.path, "--input", src, "--output", out, "--chunksize", "1000")
    line = one_line_error(proc, "score")
    assert "data row 2,500 opens a quoted field that is not closed" in line
    assert proc.returncode == 2
    assert list(tmp_path.iterdir()) == [src]


def test_score_sigterm_removes_the_partial_output(built, small_csv, tmp_path):
    """SIGTERM used to end the process where it stood, leaving the hidden .part file."""
    import signal
    import time

    out = tmp_path / "scored.csv"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reco_fast.tools.cli",
            "score",
            str(built.path),
            "--input",
            str(small_csv),
            "--output",
            str(out),
            "--chunksize",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*.part")):  # scoring has started
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


# ---- every failure is one line -----------------------------------------------------------------


def test_a_deeply_nested_session_is_a_one_line_error(built, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"current_product_id": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = run("recommend", built.path, "--session", f"@{path}")
    assert proc.returncode == 2
    assert "nested too deeply" in one_line_error(proc, "recommend")


def test_a_parquet_file_whose_metadata_disagrees_with_its_columns(built, small_csv, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.Table.from_pandas(pd.read_csv(small_csv, nrows=50))
    meta = json.loads(table.schema.metadata[b"pandas"])
    meta["index_columns"] = ["no_such_column"]  # pandas metadata naming a column not there
    src, out = tmp_path / "bad.parquet", tmp_path / "out.csv"
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(meta)}), src)
    line = one_line_error(run("score", built.path, "--input", src, "--output", out), "score")
    assert "bad.parquet" in line and "metadata" in line
    assert not out.exists()


def _artifact_with_library(built, tmp_path, library: Path, module: str) -> Path:
    """A copy of the built artifact whose library is replaced (checksums updated)."""
    art = tmp_path / "art"
    shutil.copytree(built.path, art)
    (art / built.metadata["library"]).unlink()
    shutil.copyfile(library, art / library.name)
    meta = json.loads((art / "metadata.json").read_text())
    meta.update(library=library.name, module=module)
    del meta["files"]
    (art / "metadata.json").unlink()
    write_metadata(art, meta)
    return art


def test_a_library_without_ffi_is_an_artifact_error(built, tmp_path):
    import _csv  # a real extension module of this interpreter, without cffi's ffi

    library = Path(_csv.__file__)
    art = _artifact_with_library(built, tmp_path, library, "_csv")
    with pytest.raises(reco_fast.ArtifactError, match="not a reco_fast model library"):
        reco_fast.load(art)
    for command, extra in (("verify", []), ("recommend", ["--session", "{}"])):
        line = one_line_error(run(command, art, *extra), command)
        assert "has no ffi" in line


def test_a_python_file_as_library_is_refused_without_running_it(built, tmp_path):
    marker = tmp_path / "ran"
    fake = tmp_path / "fake.py"
    fake.write_text(f"open({str(marker)!r}, 'w').close()\n")
    art = _artifact_with_library(built, tmp_path, fake, "fake")
    with pytest.raises(reco_fast.ArtifactError, match=r"is not a \.cpython.*\.so module"):
        reco_fast.load(art)
    assert "module" in one_line_error(run("verify", art), "verify")
    assert not marker.exists()


def test_an_unexpected_exception_is_one_line_with_its_type(built):
    code = (
        "import sys, reco_fast.serve.model as r\n"
        "def load(*a, **k): raise KeyError('zzz')\n"
        "r.load = load\n"
        "from reco_fast.tools.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    proc = run_code(code, "verify", built.path)
    assert proc.returncode == 1
    line = one_line_error(proc, "verify")
    assert "KeyError: 'zzz'" in line and "-v shows the traceback" in line
    proc = run_code(code, "verify", built.path, "-v")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "reco-fast verify: error: KeyError: 'zzz'"


@pytest.mark.parametrize(
    "exc, expected",
    [
        (ValueError("a\nb   c"), "a b c"),
        (OSError(2, "No such file or directory", "x.csv"), "No such file or directory: 'x.csv'"),
        (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
        (KeyError("k"), "KeyError: 'k'"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_error_line(exc, expected):
    line = error_line(exc)
    assert expected in line and "\n" not in line


def test_error_lines_are_bounded():
    line = error_line(reco_fast.InputError("x" * 100_000))
    assert len(line) == MAX_ERROR_CHARS


def test_a_failed_c_compile_is_one_line_from_reco_fast_build(built, small_csv, tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import reco_fast.compiler.driver as c\n"
        "real = c.generate_c\n"
        "def generate_c(*args, **kwargs):\n"
        "    sources = real(*args, **kwargs)\n"
        "    bad = sources['model.c'] + '\\nthis is not C at all\\n'\n"
        "    (Path(args[2]) / 'model.c').write_text(bad)\n"
        "    return {**sources, 'model.c': bad}\n"
        "c.generate_c = generate_c\n"
        "from reco_fast.tools.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "art"
    proc = run_code(
        code, "build", "-q", "--data", small_csv, "--catalog", built.catalog_path, "--out", out
    )
    assert proc.returncode == 1
    line = one_line_error(proc, "build")
    assert line.startswith("reco-fast build: error: the C compiler failed on model.c: ")
    assert "error" in line.split("model.c: ", 1)[1]
    assert not out.exists()


def test_build_progress_goes_to_stderr_and_the_report_to_stdout(built, small_csv, tmp_path):
    out = tmp_path / "art"
    proc = run_build_model(
        "--data", small_csv, "--catalog", built.catalog_path, "--out", out, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for step in ("[1/5] data", "[3/5] training", "[4/5] compiling", "s elapsed"):
        assert step in proc.stderr
    assert re.search(r"compiling \d+ C files \(", proc.stderr)
    assert re.search(r"compiled \d+ C files in", proc.stderr)
    assert proc.stdout.rstrip().splitlines()[-1].startswith(f"artifact: {out}")
    assert proc.stdout.startswith((out / "report.md").read_text()[:200])
    assert " INFO " not in proc.stdout and "generating " not in proc.stdout


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    meta=st.dictionaries(
        st.sampled_from(
            [
                "estimator",
                "n_trees",
                "feature_names",
                "feature_set",
                "threshold",
                "backend",
                "backends",
                "verification",
                "versions",
                "platform",
                "created",
                "data",
                "library",
            ]
        ),
        _json_values,
    ),
    report=st.dictionaries(
        st.sampled_from(["metrics", "high_confidence", "split", "dataset"]), _json_values
    )
    | st.just("unreadable"),
)
@settings(max_examples=200)
def test_info_summary_survives_any_metadata(meta, report):
    """info shows whatever a metadata.json holds; a field of the wrong type is refused by
    name (ArtifactMetadata), never a crash."""
    from reco_fast.metadata import ArtifactMetadata

    base = {
        "format": "reco_fast",
        "format_version": 3,
        "created": "2026-01-01T00:00:00+00:00",
        "library": "_m.so",
        "module": "_m",
        "feature_names": ["a"],
        "feature_set": None,
        "feature_spec": {},
        "threshold": 0.5,
        "estimator": {},
        "n_trees": 1,
        "backend": "tl2cgen",
        "backends": {},
        "versions": {},
        "platform": {},
        "verification": {},
        "golden": {},
    }
    try:
        typed = ArtifactMetadata.from_json({**base, **meta}, sealed=False)
    except reco_fast.ArtifactError as exc:
        assert any(f"field {key!r} must be" in str(exc) for key in meta), exc
        return
    text = info_summary(Path("art"), typed, report)
    assert text.startswith("art: reco_fast model artifact")
