"""The C reco_fast owns is kept as C files in reco_fast/compiler (harness.c, flat_template.c
and their headers harness.h and flat.h), shipped as package data; each header is both
cffi's cdef and included by the C that defines its entry points, so the C compiler checks
declaration against definition. No model build: a stub stands in for tl2cgen's code."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import tomllib

from reco_fast.compiler import codegen
from reco_fast.compiler.ir import Forest, SparseForest
from tests.helpers import REPO

COMPILER_DIR = REPO / "reco_fast" / "compiler"
C_FILES = (
    "harness.c",
    "harness.h",
    "flat.h",
    "flat_common.h",
    "flat_template.c",
    "flat64_template.c",
)

# tl2cgen's header.h and model.c, reduced to what the harness uses
STUB_HEADER = """union Entry { int missing; double fvalue; int qvalue; };
void predict(union Entry* data, int pred_margin, double* result);
"""
STUB_MODEL = '#include "header.h"\nvoid predict(union Entry* d, int m, double* r) { *r = 0; }\n'


def _declared(cdef: str) -> set[str]:
    """The function names a cdef declares."""
    text = re.sub(r"/\*.*?\*/", "", cdef, flags=re.S)
    return set(re.findall(r"\b(\w+)\s*\([^;{]*\)\s*;", text))


FOREST = Forest(
    n_features=2,
    depth=1,
    feature=np.array([[1]], dtype=np.int32),
    threshold=np.array([[0.5]], dtype=np.float32),
    leaf=np.array([[-1.0, 1.0]]),
    base_score=0.25,
)
# the float64 evaluator: complete trees with NaN routed and a zero snap, and trees as they are
FOREST64 = Forest(
    n_features=2,
    depth=1,
    feature=np.array([[1]], dtype=np.int32),
    threshold=np.array([[0.5]]),
    leaf=np.array([[-1.0, 1.0]]),
    base_score=0.25,
    nan_right=np.array([[True]]),
    precision="float64",
    zero_snap=1e-35,
)
SPARSE64 = SparseForest(
    n_features=2,
    feature=np.array([1, 0, 0], dtype=np.int32),
    threshold=np.array([0.5, np.inf, np.inf]),
    child=np.array([1, 1, 2], dtype=np.int32),
    nan_right=np.array([True, False, False]),
    value=np.array([0.0, -1.0, 1.0]),
    root=np.array([0], dtype=np.int32),
    tree_depth=np.array([1], dtype=np.int32),
    base_score=0.25,
    nan_routed=True,
)


def _sources(
    tmp: Path, harness_h: str = codegen.CDEF, forest: Forest | SparseForest = FOREST
) -> list[Path]:
    files = {
        "header.h": STUB_HEADER,
        "model.c": STUB_MODEL,
        "harness.h": harness_h,
        "flat.h": codegen.CDEF_FLAT,
        "flat_common.h": codegen.FLAT_COMMON,
        "harness.c": codegen.harness_source(2) + '\n#include "flat.h"\n',
        "flat.c": codegen.flat_source(forest),
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    return [tmp / n for n in files if n.endswith(".c")]


def _cc() -> list[str]:
    cc = codegen._compiler()
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]})")
    return cc


def test_the_c_is_read_from_the_package_files() -> None:
    for name, text in (
        ("harness.h", codegen.CDEF),
        ("flat.h", codegen.CDEF_FLAT),
        ("flat_common.h", codegen.FLAT_COMMON),
        ("harness.c", codegen.HARNESS),
    ):
        assert (COMPILER_DIR / name).read_text(encoding="utf-8") == text, name
    assert '#include "harness.h"' in codegen.HARNESS
    for template in ("flat_template.c", "flat64_template.c"):
        text = (COMPILER_DIR / template).read_text()
        assert '#include "flat.h"' in text and '#include "flat_common.h"' in text, template


@pytest.mark.parametrize("forest", [FOREST, FOREST64, SPARSE64], ids=["f32", "f64", "sparse64"])
def test_every_declared_entry_point_is_defined_as_declared(
    forest: Forest | SparseForest, tmp_path: Path
) -> None:
    cc = _cc()
    objects = []
    for unit in _sources(tmp_path, forest=forest):
        obj = unit.with_suffix(".o")
        cmd = [*cc, *codegen.COMPILE_ARGS, "-Werror", f"-I{tmp_path}", "-c", str(unit)]
        proc = subprocess.run([*cmd, "-o", str(obj)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        objects.append(str(obj))
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm to list the defined symbols")
    listing = subprocess.run([nm, "--defined-only", *objects], capture_output=True, text=True)
    defined = {line.split()[-1] for line in listing.stdout.splitlines() if " T " in line}
    headers = (codegen.CDEF, codegen.CDEF_FLAT)
    declared = _declared(codegen.CDEF) | _declared(codegen.CDEF_FLAT)
    statements = sum(re.sub(r"/\*.*?\*/", "", h, flags=re.S).count(";") for h in headers)
    assert len(declared) == statements and {"rf_predict_one", "rq_has_avx2"} <= declared
    assert declared <= defined, sorted(declared - defined)


def test_a_declaration_that_drifts_from_its_definition_does_not_compile(tmp_path: Path) -> None:
    cc = _cc()
    drifted = codegen.CDEF.replace("double rf_predict_one(", "float rf_predict_one(")
    assert drifted != codegen.CDEF
    harness = next(u for u in _sources(tmp_path, drifted) if u.name == "harness.c")
    proc = subprocess.run(
        [*cc, f"-I{tmp_path}", "-fsyntax-only", str(harness)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "rf_predict_one" in proc.stderr


def test_cffi_takes_the_headers_as_its_cdef() -> None:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(codegen.CDEF + codegen.CDEF_FLAT)  # no preprocessor lines in either
    assert ffi.typeof("double(*)(const double *)") is ffi.typeof("double(*)(const double*)")


def test_package_data_ships_every_c_file() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["reco_fast.compiler"]
    present = sorted(p.name for p in COMPILER_DIR.iterdir() if p.suffix in (".c", ".h"))
    assert set(C_FILES) <= set(present)
    for name in present:
        assert any(fnmatch(name, pattern) for pattern in patterns), name


def test_a_built_wheel_holds_the_c_files(tmp_path: Path) -> None:
    """The wheel setuptools builds from this tree (no network: no build isolation)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "reco_fast", src / "reco_fast", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(wheels), "--no-deps"]
    proc = subprocess.run(
        [*cmd, "--no-build-isolation", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("reco_fast-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"reco_fast/compiler/{n}" for n in C_FILES} <= names


def _flat_library(tmp: Path, forest: Forest) -> ctypes.CDLL:
    """The flat evaluator's C of ``forest`` alone, compiled into a shared library."""
    cc = _cc()
    (tmp / "flat.h").write_text(codegen.CDEF_FLAT)
    (tmp / "flat_common.h").write_text(codegen.FLAT_COMMON)
    (tmp / "flat.c").write_text(codegen.flat_source(forest))
    lib = tmp / "flat.so"
    cmd = [*cc, *codegen.COMPILE_ARGS, "-Werror", "-fPIC", "-shared", f"-I{tmp}"]
    proc = subprocess.run(
        [*cmd, str(tmp / "flat.c"), "-o", str(lib), "-lm"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ctypes.CDLL(str(lib))


@pytest.mark.parametrize("depth", [2, 6])  # 6: the float32 AVX2 kernel's blends, not QuickScorer
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_infinite_thresholds_keep_their_sign(precision: str, depth: int, tmp_path: Path) -> None:
    """A -inf threshold (every number goes right) and a +inf one that sends NaN right
    are real splits: their C literals keep the sign, and the SIMD kernels compare them
    (only +inf sending NaN left is padding). Both were taken for padding or written as
    INFINITY: -inf turned every number left, silently."""
    dtype = np.float32 if precision == "float32" else np.float64
    nn = (1 << depth) - 1
    threshold = np.full((1, nn), np.inf, dtype=dtype)  # padding, but for the first nodes
    threshold[0, :3] = [-np.inf, 0.5, np.inf]
    nan_right = np.zeros((1, nn), dtype=bool)
    nan_right[0, 2] = True
    forest = Forest(
        n_features=2,
        depth=depth,
        feature=np.array([[0, 1, 1] + [0] * (nn - 3)], dtype=np.int32),
        threshold=threshold,
        leaf=np.arange(1 << depth, dtype=np.float64)[None, :],
        base_score=0.0,
        link="identity",
        nan_right=nan_right,
        precision=precision,
    )
    rows = np.array([[0.0, 0.0], [-1e30, 1.0], [5.0, np.nan], [np.nan, 1.0]])
    expected = forest.predict_margin(rows)
    half = 1 << (depth - 1)  # the root sends every number right, NaN left
    assert expected.tolist() == [half, half, half + half // 2, half // 2]
    lib = _flat_library(tmp_path, forest)
    ptr = ctypes.POINTER(ctypes.c_double)
    one = lib.rq_margin_one
    one.restype, one.argtypes = ctypes.c_double, [ptr]
    X = np.ascontiguousarray(rows)
    assert [one(X[i].ctypes.data_as(ptr)) for i in range(len(X))] == expected.tolist()
    kernels = ["portable"] + [k for k in ("avx2", "avx512") if getattr(lib, f"rq_has_{k}")()]
    for kernel in kernels:
        batch = getattr(lib, f"rq_margin_f64_{kernel}")
        batch.restype, batch.argtypes = ctypes.c_ssize_t, [ptr, ctypes.c_size_t, ptr]
        out = np.zeros(len(X))
        assert batch(X.ctypes.data_as(ptr), len(X), out.ctypes.data_as(ptr)) == -1
        assert out.tolist() == expected.tolist(), kernel
