"""Code generation: tl2cgen's C for the trees, plus the harness reco_fast owns.

tl2cgen emits one ``predict(union Entry*, int, double*)`` per model. The harness
around it gives the entry points a service needs (a single row, a batch loop in
C over float64 or float32 rows) and rounds every input through float32 first,
as scikit-learn does, which also keeps a double's low word from ever reading as
tl2cgen's "missing" marker. cffi's API mode builds the pair into an extension
module whose name carries the source hash, so two artifacts never collide in
one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CDEF", "build_library", "generate_c"]

CDEF = """
int rf_num_feature(void);
double rf_predict_one(const double* x);
void rf_predict_f64(const double* X, size_t n_rows, double* out);
void rf_predict_f32(const float* X, size_t n_rows, double* out);
"""

HARNESS = """
#include <stddef.h>
#include "header.h"

#define RF_NFEAT {n_features}

static inline double rf_row_f64(const double* x) {{
  union Entry data[RF_NFEAT];
  for (int j = 0; j < RF_NFEAT; ++j) data[j].fvalue = (double)(float)x[j];
  double result = 0.0;
  predict(data, 0, &result);
  return result;
}}

int rf_num_feature(void) {{ return RF_NFEAT; }}

double rf_predict_one(const double* x) {{ return rf_row_f64(x); }}

void rf_predict_f64(const double* X, size_t n_rows, double* out) {{
  for (size_t i = 0; i < n_rows; ++i) out[i] = rf_row_f64(X + i * RF_NFEAT);
}}

void rf_predict_f32(const float* X, size_t n_rows, double* out) {{
  union Entry data[RF_NFEAT];
  for (size_t i = 0; i < n_rows; ++i) {{
    const float* x = X + i * RF_NFEAT;
    for (int j = 0; j < RF_NFEAT; ++j) data[j].fvalue = (double)x[j];
    double result = 0.0;
    predict(data, 0, &result);
    out[i] = result;
  }}
}}
"""

TL2CGEN_VERSION_WARNING = "originated from a newer Treelite version"

log = logging.getLogger(__name__)


@contextlib.contextmanager
def native_output(what: str) -> Iterator[list[str]]:
    """Capture what native code writes to fd 1 and 2, and log it instead.

    tl2cgen 1.0.0 embeds the treelite 4.1 runtime, which writes straight to
    stderr that the checkpoint "originated from a newer Treelite version".
    The fields tl2cgen reads have not changed since 4.0 and every build proves
    the generated code equal to scikit-learn, so that line is logged at DEBUG;
    anything else native code says is logged as a warning.
    """
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())
    known = (
        "newer Treelite version",
        "Currently running Treelite",
        "checkpoint was generated",
        "Parallel compilation disabled",
        "unused variable",
        "unsigned int tmp",
        "^~~",
        "In function",
    )
    for line in lines:
        level = (
            logging.DEBUG if any(k in line for k in known) or not line.strip() else logging.WARNING
        )
        log.log(level, "%s: %s", what, line)


def generate_c(treelite_model: Any, n_features: int, out_dir: Path) -> dict[str, str]:
    """Write tl2cgen's C and the harness into out_dir; return {file name: source}."""
    import tl2cgen

    gen_dir = Path(tempfile.mkdtemp(prefix="tl2cgen-", dir=out_dir))
    with native_output("tl2cgen"):
        tl2cgen.generate_c_code(treelite_model, dirpath=str(gen_dir), params={})
    sources = {
        "model.c": (gen_dir / "main.c").read_text(),
        "header.h": (gen_dir / "header.h").read_text(),
        "harness.c": HARNESS.format(n_features=n_features),
    }
    extra = sorted(p.name for p in gen_dir.iterdir() if p.suffix == ".c" and p.name != "main.c")
    if extra:
        raise RuntimeError(f"tl2cgen wrote more sources than expected: {extra}")
    shutil.rmtree(gen_dir)
    for name, text in sources.items():
        (out_dir / name).write_text(text)
    return sources


def module_name(sources: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return f"_reco_model_{digest.hexdigest()[:16]}"


def build_library(sources: dict[str, str], src_dir: Path, out_dir: Path) -> Path:
    """Compile the sources in src_dir with cffi; return the extension module's path."""
    import cffi

    name = module_name(sources)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        name,
        sources["harness.c"],
        sources=[str(src_dir / "model.c")],
        include_dirs=[str(src_dir)],
        extra_compile_args=["-O2", "-fno-fast-math"],
    )
    build_dir = Path(tempfile.mkdtemp(prefix="cffi-", dir=out_dir))
    try:
        try:
            with native_output("cc") as output:
                built = Path(ffi.compile(tmpdir=str(build_dir), verbose=False))
        except Exception as exc:
            raise RuntimeError(f"compiling the model failed: {exc}\n" + "\n".join(output)) from exc
        target = out_dir / built.name
        shutil.copyfile(built, target)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return target
