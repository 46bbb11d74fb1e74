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

import errno
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from reco_fast.artifact import platform_tag
from reco_fast.compiler.ir import Forest, SparseForest
from reco_fast.features import spec as _spec

__all__ = ["CDEF", "build_library", "flat_source", "generate_c"]


def _c_file(name: str) -> str:
    """A C source or header shipped in this package (reco_fast/compiler/NAME)."""
    return resources.files("reco_fast.compiler").joinpath(name).read_text(encoding="utf-8")


CDEF = _c_file("harness.h")
"""The harness's entry points (``rf_*``): cffi's cdef, and the header harness.c includes."""
CDEF_FLAT = _c_file("flat.h")
"""The flat evaluator's entry points (``rq_*``): cffi's cdef, and the header flat.c and the
harness include."""
FLAT_COMMON = _c_file("flat_common.h")
"""The C both flat evaluators' templates share; flat.c includes it."""
# -ffp-contract=off: no fused multiply-add may change a rounding the verification relies on.
COMPILE_ARGS = ["-O2", "-fno-fast-math", "-ffp-contract=off", "-Wno-unused-variable"]

HARNESS = _c_file("harness.c")
"""C around tl2cgen's ``predict()``: the ``rf_*`` entry points, with ``@NAME@`` fields that
:func:`generate_c` fills."""

TL2CGEN_VERSION_WARNING = "originated from a newer Treelite version"

log = logging.getLogger(__name__)


_TL2CGEN_SCRIPT = """
import json, sys, tl2cgen, treelite
model = treelite.Model.deserialize_bytes(sys.stdin.buffer.read())
tl2cgen.generate_c_code(model, dirpath=sys.argv[1], params=json.loads(sys.argv[2]))
"""
_TL2CGEN_KNOWN = (
    "newer Treelite version",
    "Currently running Treelite",
    "checkpoint was generated",
    "Parallel compilation disabled",
    "Parallel compilation enabled",
)


def _run_tl2cgen(treelite_model: Any, gen_dir: Path, params: dict[str, Any] | None = None) -> None:
    """tl2cgen's code generator in a child process, its native output captured there.

    tl2cgen 1.0.0 embeds the treelite 4.1 runtime, which writes straight to the
    process's stderr that the checkpoint "originated from a newer Treelite
    version". The fields tl2cgen reads have not changed since 4.0 and every build
    proves the generated code equal to the reference library, so that line is
    logged at DEBUG; anything else is logged as a warning. Running it in a child
    keeps this process's file descriptors untouched.
    """
    done = subprocess.run(
        [sys.executable, "-c", _TL2CGEN_SCRIPT, str(gen_dir), json.dumps(params or {})],
        input=treelite_model.serialize_bytes(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = done.stdout.decode("utf-8", "replace")
    for line in output.splitlines():
        if line.strip():
            known = any(k in line for k in _TL2CGEN_KNOWN)
            log.log(logging.DEBUG if known else logging.WARNING, "tl2cgen: %s", line)
    if done.returncode != 0:
        from reco_fast.errors import CompileError

        raise CompileError(f"tl2cgen could not generate C for this model: {_first_error(output)}")


def session_harness(feature_set: str, n_features: int, flat: bool) -> tuple[str, str]:
    """C and cdef for one page view from its raw numbers: ``rs_predict_<backend>(...)`` and
    its raw margin ``rs_margin_<backend>(...)``."""
    from reco_fast.features.page import FEATURE_SETS, candidate_kernel_c, session_kernel_c

    if len(FEATURE_SETS[feature_set]) != n_features:
        raise ValueError(
            f"the {feature_set!r} feature set has {len(FEATURE_SETS[feature_set])} "
            f"features, the model {n_features}"
        )
    definition, args = session_kernel_c(feature_set)
    params = ", ".join(f"double {a}" for a in args.split(", "))
    source, cdef = "\n" + definition, ""
    for backend, one, margin in (
        ("tl2cgen", "rf_predict_one", "rf_margin_one"),
        ("flat", "rq_predict_one", "rq_margin_one"),
    ):
        if backend == "flat" and not flat:
            continue
        # rs_margin_*: the raw margin of one page view, for calibrated artifacts
        for name, fn in ((f"rs_predict_{backend}", one), (f"rs_margin_{backend}", margin)):
            source += (
                f"double {name}({params}) {{\n  double x[{n_features}];\n"
                f"  rs_features({args}, x);\n  return {fn}(x);\n}}\n"
            )
            cdef += f"double {name}({params});\n"
    if feature_set == "ranking":
        spec = _spec.FEATURE_SETS[feature_set]
        source += candidate_kernel_c(feature_set) + _c_file("recommend.c").replace(
            "@N_SESSION@", str(len(spec.session))
        ).replace("@N_CANDIDATE@", str(len(spec.candidate)))
        kinds = [("tl2cgen", "rf_predict_prefix")] + (
            [(k, f"rq_predict_prefix_{k}") for k in ("portable", "avx2", "avx512")] if flat else []
        )
        for kind, prefix in kinds:
            signature = (
                f"int64_t rs_recommend_{kind}(const double* row, const double* cat_codes, "
                "const double* prices, size_t n_catalog, const int64_t* viewed_pos, "
                "size_t n_viewed, const int64_t* drop_pos, size_t n_drop, const int64_t* cand, "
                "size_t n_cand, double threshold, size_t k, int64_t* top_pos, double* top_p)"
            )
            source += (
                f"{signature} {{\n"
                "  return rs_recommend(row, cat_codes, prices, n_catalog, viewed_pos, n_viewed,\n"
                "                      drop_pos, n_drop, cand, n_cand, threshold, k, top_pos,\n"
                f"                      top_p, {prefix});\n}}\n"
            )
            cdef += signature + ";\n"
    return source, cdef


_MISSING_TEST = re.compile(r"data\[(\d+)\]\.missing != -1")
_PREDICT_SIGNATURE = re.compile(
    r"void predict\(union Entry\* data, int pred_margin, (float|double)\* result\);"
)

UNIT_NODES = 25_000
"""Tree nodes per translation unit of tl2cgen's code (about 1.4 MB of C): units compile
in parallel and no one compiler process holds a huge function (500 trees of depth 10,
511,000 nodes, in one 32 MB unit did not compile in 16 minutes; cc1 held 1.8 GB)."""


def route_missing(source: str) -> tuple[str, int]:
    """tl2cgen's C with its missing-value test made NaN: ``!isnan(data[j].fvalue)``.

    tl2cgen marks a missing feature by writing -1 into the int that overlays the
    value (``data[j].missing``); for a double that is any value whose low 32 bits are
    all ones, finite values included. Reading NaN as "missing" instead makes every
    finite value a value and lets NaN reach the trees as itself, routed where each
    split learned to send missing values. Returns the source and how many tests were
    rewritten.
    """
    out, n = _MISSING_TEST.subn(r"!isnan(data[\1].fvalue)", source)
    if ".missing" in out:
        raise RuntimeError("tl2cgen's code reads .missing in a form reco_fast does not rewrite")
    return out, n


def generate_c(
    treelite_model: Any,
    n_features: int,
    out_dir: Path,
    forest: Forest | SparseForest | None = None,
    feature_set: str | None = None,
    *,
    input_precision: str = "float32",
    missing_values: str = "refused",
    n_nodes: int | None = None,
    zero_snap: float = 0.0,
) -> dict[str, str]:
    """Write tl2cgen's C, the harness and (given a forest) the flat evaluator into out_dir.

    ``input_precision`` ("float32" or "float64") is how inputs reach the trees;
    ``missing_values`` ("routed" or "refused") whether NaN is a valid input. With
    ``n_nodes`` (the forest's) above :data:`UNIT_NODES`, tl2cgen splits the trees over
    several translation units (``model_tu<i>.c``), compiled in parallel. ``zero_snap`` > 0:
    an input with ``|x| <= zero_snap`` reads as 0 (LightGBM's dense rows).

    Returns {file name: source}.
    """
    if input_precision not in ("float32", "float64"):
        raise ValueError(f"input_precision must be 'float32' or 'float64', got {input_precision!r}")
    if missing_values not in ("routed", "refused"):
        raise ValueError(f"missing_values must be 'routed' or 'refused', got {missing_values!r}")
    gen_dir = Path(tempfile.mkdtemp(prefix="tl2cgen-", dir=out_dir))
    units = max(1, math.ceil((n_nodes or 0) / UNIT_NODES))
    _run_tl2cgen(treelite_model, gen_dir, {"parallel_comp": units} if units > 1 else {})
    header = (gen_dir / "header.h").read_text()
    signature = _PREDICT_SIGNATURE.search(header)
    if signature is None:
        raise RuntimeError("tl2cgen's header.h declares predict() in an unexpected form")
    sources = {
        "model.c": (gen_dir / "main.c").read_text(),
        "header.h": header,
    }
    for path in sorted(gen_dir.glob("tu*.c"), key=lambda p: int(p.stem[2:])):
        sources[f"model_{path.name}"] = path.read_text()
    for name in [n for n in sources if n.endswith(".c")]:
        sources[name] = route_missing(sources[name])[0]
    sources["harness.c"] = harness_source(
        n_features, input_precision, missing_values, signature.group(1), zero_snap
    )
    sources["harness.h"] = CDEF
    if forest is not None:
        sources["harness.c"] += '\n#include "flat.h"\n'
        sources["flat.h"] = CDEF_FLAT
        sources["flat_common.h"] = FLAT_COMMON
    if feature_set is not None:
        source, cdef = session_harness(feature_set, n_features, forest is not None)
        sources["harness.c"] += source
        sources["session.cdef"] = cdef
    if forest is not None:
        sources["flat.c"] = flat_source(forest)
        if (
            feature_set in _spec.FEATURE_SETS
            and _spec.FEATURE_SETS[feature_set].candidate
            and forest.precision == "float32"  # the top-k's cells read float32 thresholds
        ):
            source, cdef = topk_cells_c()
            sources["harness.c"] += source
            sources["session.cdef"] += cdef
    expected = {"main.c"} | {f"tu{i}.c" for i in range(units)}
    extra = sorted(p.name for p in gen_dir.iterdir() if p.suffix == ".c" and p.name not in expected)
    if extra:
        raise RuntimeError(f"tl2cgen wrote more sources than expected: {extra}")
    shutil.rmtree(gen_dir)
    for name, text in sources.items():
        (out_dir / name).write_text(text)
    return sources


def topk_cells_c() -> tuple[str, str]:
    """C and cdef of the whole-catalog top-k by threshold cells (``topk_cells.c``).

    The cdef is the file's own block between ``/* cdef: begin */`` and ``/* cdef: end */``,
    so the declaration cffi sees is the definition's, written once.
    """
    source = (Path(__file__).parent / "topk_cells.c").read_text()
    begin, end = "/* cdef: begin */", "/* cdef: end */"
    cdef = source[source.index(begin) + len(begin) : source.index(end)]
    return "\n" + source, cdef


def harness_source(
    n_features: int,
    input_precision: str = "float32",
    missing_values: str = "refused",
    result_type: str = "double",
    zero_snap: float = 0.0,
) -> str:
    """harness.c with its fields filled (it includes tl2cgen's ``header.h`` and ``harness.h``).

    ``result_type`` is the C type tl2cgen's ``predict()`` accumulates into ("float" or
    "double"); the other parameters are :func:`generate_c`'s.
    """
    return _fill(
        HARNESS,
        {
            "N_FEATURES": str(n_features),
            "F32_INPUT": "1" if input_precision == "float32" else "0",
            "NAN_ROUTED": "1" if missing_values == "routed" else "0",
            "RESULT_T": result_type,
            "ZERO_SNAP": float(zero_snap).hex(),
        },
    )


QS_MAX_DEPTH = 5
"""QuickScorer keeps a tree's leaves as bits of one 32-bit lane: up to 32 leaves."""


def _c_number(v: float, suffix: str = "") -> str:
    """``v`` as an exact C literal: hex digits (``suffix`` "f" for a float), or the signed
    infinity (a -inf threshold is a real split: every number goes right)."""
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return float(v).hex() + suffix


def _f32(v: float) -> str:
    return _c_number(v, "f")


def _nan_right(forest: Forest, tree: int, node: int) -> bool:
    """Whether this node sends NaN right (only models that route missing values)."""
    return forest.nan_right is not None and bool(forest.nan_right[tree, node])


def _padding(forest: Forest, tree: int, node: int) -> bool:
    """Whether this node sends every input left, NaN included (a complete tree's padding,
    threshold +inf): the SIMD kernels emit no compare for it. A -inf threshold is a split
    (every number goes right)."""
    return forest.threshold[tree, node] == math.inf and not _nan_right(forest, tree, node)


def _qs_cuts(forest: Forest, tree: int) -> Iterator[tuple[int, str, int]]:
    """QuickScorer's cuts of one complete tree: (node, "CUT" or "CUTN" where NaN goes
    right, the bit mask of its left subtree's leaves), level by level; padded nodes (always
    left) emit none."""
    depth = forest.depth
    for level in range(depth):
        span = 1 << (depth - level)
        for p in range(1 << level):
            node = (1 << level) - 1 + p
            if _padding(forest, tree, node):
                continue
            cut = "CUTN" if _nan_right(forest, tree, node) else "CUT"
            yield node, cut, ((1 << (span // 2)) - 1) << (p * span)


def _qs_trees(forest: Forest, width: int) -> str:
    """QuickScorer code per tree: false nodes clear their left subtree's leaf bits."""
    depth = forest.depth
    everything = (1 << (1 << depth)) - 1
    lines = []
    for t in range(forest.n_trees):
        body = [
            f"__m{32 * width}i v = _mm{'512' if width == 16 else '256'}_set1_epi32("
            f"(int){everything:#x}u);"
        ]
        for node, cut, left in _qs_cuts(forest, t):
            body.append(
                f"RQ{width}_{cut}({forest.feature[t, node]}, "
                f"{_f32(forest.threshold[t, node])}, {left:#x}u);"
            )
        body.append(f"const __m{32 * width}i i = RQ{width}_LOWEST(v);")
        body.append(f"RQ{width}_ADD(g{t % 4}, {t}, i);")
        lines.append("  { " + "\n    ".join(body) + " }")
    return "\n".join(lines)


def _blend_trees(forest: Forest) -> str:
    """AVX2 code per tree for deep trees: every node compared, the path chosen by blends.

    A padded node (threshold +inf) never goes right, so its compare is the
    constant zero and blends of equal arms disappear; sparse trees cost less.
    """
    lines = []
    depth = forest.depth
    for t in range(forest.n_trees):
        feat, thr = forest.feature[t], forest.threshold[t]
        body = []
        for level in range(depth):
            base = (1 << level) - 1
            arms = [
                "RQ8_Z"
                if _padding(forest, t, base + n)
                else f"RQ8_GT{'N' if _nan_right(forest, t, base + n) else ''}"
                f"({feat[base + n]}, {_f32(thr[base + n])})"
                for n in range(1 << level)
            ]
            for k in range(level - 1, -1, -1):
                arms = [
                    a if a == b else f"RQ8_SEL({a}, {b}, b{k})"
                    for a, b in zip(arms[0::2], arms[1::2], strict=True)
                ]
            body.append(f"const __m256 b{level} = {arms[0]};")
        bits = [f"RQ8_BIT(b{lv}, {1 << (depth - 1 - lv)})" for lv in range(depth)]
        body.append(f"const __m256i i = {_or_tree(bits)};")
        body.append(f"RQ8_ADD(g{t % 4}, {t}, i);")
        lines.append("  { " + "\n    ".join(body) + " }")
    return "\n".join(lines)


def _or_tree(terms: list[str]) -> str:
    while len(terms) > 1:
        terms = [
            f"_mm256_or_si256({a}, {b})"
            for a, b in zip(terms[0::2], terms[1::2], strict=False)  # odd: last carried over
        ] + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def flat_source(forest: Forest | SparseForest) -> str:
    """C for the flat evaluator: the forest's arrays as exact hex literals in the template
    (``flat64_template.c`` for a forest that compares float64 inputs)."""
    if isinstance(forest, SparseForest):
        return _flat64_sparse_source(forest)
    if forest.precision == "float64":
        return _flat64_source(forest)

    fields = {
        **_complete_fields(forest, _f32),
        "AVX2_TREES": _qs_trees(forest, 8)
        if forest.depth <= QS_MAX_DEPTH
        else _blend_trees(forest),
        "HAVE_AVX512": "1" if forest.depth <= QS_MAX_DEPTH else "0",
        "AVX512_TREES": _qs_trees(forest, 16) if forest.depth <= QS_MAX_DEPTH else "",
    }
    return _fill(_c_file("flat_template.c"), fields)


def _complete_fields(forest: Forest, threshold: Callable[[float], str]) -> dict[str, str]:
    """The template fields of a complete forest both flat evaluators share; ``threshold``
    writes one threshold as a C literal (float32 or double)."""
    return {
        "N_FEATURES": str(forest.n_features),
        "N_TREES": str(forest.n_trees),
        "DEPTH": str(forest.depth),
        "FEATURES": ",".join(map(str, forest.feature.ravel().tolist())),
        "THRESHOLDS": ",".join(threshold(v) for v in forest.threshold.ravel().tolist()),
        "LEAVES": ",".join(float(v).hex() for v in forest.leaf.ravel().tolist()),
        "BASE": float(forest.base_score).hex(),
        "LINK": "rq_sigmoid(M)" if forest.link == "sigmoid" else "(M)",
        "NAN_ROUTED": "0" if forest.nan_right is None else "1",
        "NAN_RIGHT": "0"
        if forest.nan_right is None
        else ",".join("1" if v else "0" for v in forest.nan_right.ravel().tolist()),
    }


QS64_MAX_DEPTH = 6
"""The float64 evaluator's QuickScorer keeps a tree's leaves as bits of one 64-bit lane."""


def _qs64_trees(forest: Forest) -> str:
    """The float64 evaluator's AVX2 QuickScorer code per tree (8 rows in two registers,
    64-bit lanes)."""
    depth = forest.depth
    everything = (1 << (1 << depth)) - 1
    lines = []
    for t in range(forest.n_trees):
        body = [f"__m256i vlo = _mm256_set1_epi64x((long long){everything:#x}ull), vhi = vlo;"]
        for node, cut, left in _qs_cuts(forest, t):
            body.append(
                f"RQ4_{cut}({forest.feature[t, node]}, "
                f"{_f64(forest.threshold[t, node])}, {left:#x}ull);"
            )
        body.append(f"RQ4_ADD(g{t % 4}, {t});")
        lines.append("  { " + "\n    ".join(body) + " }")
    return "\n".join(lines)


def _f64(v: float) -> str:
    return _c_number(v)


def _fill(template: str, fields: dict[str, str]) -> str:
    """``template`` with every ``@KEY@`` replaced by ``fields[KEY]``."""
    for key, value in fields.items():
        template = template.replace(f"@{key}@", value)
    return template


def _flat64_sparse_source(forest: SparseForest) -> str:
    """C for the float64 flat evaluator over trees as they are (portable kernels only)."""
    return _fill(
        _c_file("flat64_template.c"),
        {
            "N_FEATURES": str(forest.n_features),
            "N_TREES": str(forest.n_trees),
            "DEPTH": "1",
            "SPARSE": "1",
            "FEATURES": ",".join(map(str, forest.feature.tolist())),
            "THRESHOLDS": ",".join(_f64(v) for v in forest.threshold.tolist()),
            "CHILD": ",".join(map(str, forest.child.tolist())),
            "LEAVES": ",".join(float(v).hex() for v in forest.value.tolist()),
            "ROOT": ",".join(map(str, forest.root.tolist())),
            "TREE_DEPTH": ",".join(map(str, forest.tree_depth.tolist())),
            "BASE": float(forest.base_score).hex(),
            "LINK": "rq_sigmoid(M)" if forest.link == "sigmoid" else "(M)",
            "NAN_ROUTED": "1" if forest.nan_routed else "0",
            "NAN_RIGHT": ",".join("1" if v else "0" for v in forest.nan_right.tolist()),
            "ZERO_SNAP": float(forest.zero_snap).hex(),
            "HAVE_AVX2": "0",
            "AVX2_TREES": "",
        },
    )


def _flat64_source(forest: Forest) -> str:
    """C for the float64 flat evaluator (portable kernels, double thresholds as they are)."""
    fields = {
        "SPARSE": "0",
        "CHILD": "0",
        "ROOT": "0",
        "TREE_DEPTH": "0",
        **_complete_fields(forest, _f64),
        "ZERO_SNAP": float(forest.zero_snap).hex(),
        "HAVE_AVX2": "1" if forest.depth <= QS64_MAX_DEPTH else "0",
        "AVX2_TREES": _qs64_trees(forest) if forest.depth <= QS64_MAX_DEPTH else "",
    }
    return _fill(_c_file("flat64_template.c"), fields)


def module_name(sources: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return f"_reco_model_{digest.hexdigest()[:16]}"


def _compiler() -> list[str]:
    """The C compiler Python itself was built with (``CC``), or ``cc``."""
    return shlex.split(sysconfig.get_config_var("CC") or "cc")


def _first_error(output: str) -> str:
    """The compiler's first error line, bounded, for a one-line CompileError."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:300]
    return (lines[0] if lines else "no output")[:300]


def build_library(sources: dict[str, str], src_dir: Path, out_dir: Path) -> Path:
    """Compile the sources in ``src_dir`` into a CPython extension module in ``out_dir``.

    cffi (API mode) writes the module's C from the cdef and the harness; each
    translation unit is then compiled by its own compiler process, in parallel,
    and linked with ``-shared``. Nothing here changes the process's working
    directory or file descriptors, and every path handed to the compiler is
    absolute, so the build does not depend on the caller's working directory.

    Parameters
    ----------
    sources : dict of str to str
        ``{file name: source}`` from :func:`generate_c`; the files exist in ``src_dir``.
    src_dir, out_dir : Path
        Where the sources are and where the library is written (relative paths are
        taken against the current working directory once, here).

    Returns
    -------
    Path
        The absolute path of the extension module, ``<module name><EXT_SUFFIX>``.

    Raises
    ------
    CompileError
        The compiler failed; the message names its first error on one line.
    """
    import cffi

    from reco_fast.errors import CompileError

    src_dir, out_dir = Path(os.path.abspath(src_dir)), Path(os.path.abspath(out_dir))
    name = module_name(sources)
    ffi = cffi.FFI()
    ffi.cdef(CDEF + (CDEF_FLAT if "flat.c" in sources else "") + sources.get("session.cdef", ""))
    # compiler_verbose=False: cffi would print "generating ..." to stdout, which is the report's
    ffi.set_source(name, sources["harness.c"], compiler_verbose=False)
    module_c = src_dir / f"{name}.c"
    ffi.emit_c_code(str(module_c))
    units = [module_c] + [src_dir / f for f in sources if f.endswith(".c") and f != "harness.c"]
    include = [f"-I{src_dir}", f"-I{sysconfig.get_paths()['include']}"]
    cc = _compiler()
    objects = [unit.with_suffix(".o") for unit in units]
    jobs = compile_jobs()
    started = time.perf_counter()
    log.info(
        "compiling %d C files (%s) with %s, %d at a time",
        len(units),
        ", ".join(f"{u.name} {_opt_level(u)}" for u in units),
        cc[0],
        jobs,
    )
    commands = [
        [*cc, *_flags(unit), *include, "-c", str(unit), "-o", str(obj)]
        for unit, obj in zip(units, objects, strict=True)
    ]
    procs, outputs = _run_compilers(commands, [u.name for u in units], src_dir, jobs, started)
    for unit, proc, output in zip(units, procs, outputs, strict=True):
        _log_compiler_output(output)
        if proc.returncode != 0:
            _raise_if_disk_full(output)
            raise CompileError(f"the C compiler failed on {unit.name}: {_first_error(output)}")
    target = out_dir / (name + (platform_tag()["ext_suffix"] or ".so"))
    link = subprocess.run(
        [*cc, "-shared", *map(str, objects), "-o", str(target), "-lm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=src_dir,
        check=False,
    )
    output = link.stdout.decode("utf-8", "replace")
    _log_compiler_output(output)
    if link.returncode != 0:
        _raise_if_disk_full(output)
        raise CompileError(f"linking the model library failed: {_first_error(output)}")
    log.info("compiled %d C files in %.1f s", len(units), time.perf_counter() - started)
    return target


COMPILE_PROGRESS_EVERY_S = 5.0
"""While the C compiler runs, a progress line is logged this often."""

LARGE_SOURCE_BYTES = 1_000_000
"""A translation unit larger than this is compiled with -O1: -O2's passes over one huge
function of nested branches cost about twice the time (measured on 50 trees of depth 10,
2.9 MB: -O2 60-70 s, -O1 35 s, on a loaded 2-core machine)."""


def compile_jobs() -> int:
    """How many compilers run at once: the CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _opt_level(unit: Path) -> str:
    try:
        large = unit.stat().st_size > LARGE_SOURCE_BYTES
    except OSError:
        large = False
    return "-O1" if large else "-O2"


def _flags(unit: Path) -> list[str]:
    """-O2 (or -O1 for a large unit), no debug info, no float contraction."""
    args = [a for a in COMPILE_ARGS if not a.startswith("-O")]
    return ["-fPIC", "-DNDEBUG", "-fwrapv", _opt_level(unit), *args]


def _run_compilers(
    commands: list[list[str]], names: list[str], cwd: Path, jobs: int, started: float
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Run the compiler commands, ``jobs`` at a time; every few seconds a log line says
    how many are done and which are running. Returns each process and its output. On
    any exception (KeyboardInterrupt included) every started compiler is killed."""
    procs: list[subprocess.Popen[bytes] | None] = [None] * len(commands)
    outputs = [""] * len(commands)
    threads: list[threading.Thread | None] = [None] * len(commands)

    def drain(i: int) -> None:
        proc = procs[i]
        assert proc is not None
        outputs[i] = proc.communicate()[0].decode("utf-8", "replace")

    pending = list(range(len(commands)))
    next_report = started + COMPILE_PROGRESS_EVERY_S
    try:
        while True:
            running = [i for i, t in enumerate(threads) if t is not None and t.is_alive()]
            while pending and len(running) < jobs:
                i = pending.pop(0)
                procs[i] = subprocess.Popen(
                    commands[i], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd
                )
                thread = threading.Thread(target=drain, args=(i,), daemon=True)
                threads[i] = thread
                thread.start()
                running.append(i)
            if not running and not pending:
                break
            threads[running[0]].join(min(0.2, max(next_report - time.perf_counter(), 0.0)))  # type: ignore[union-attr]
            if time.perf_counter() >= next_report:
                done = sum(1 for t in threads if t is not None and not t.is_alive())
                log.info(
                    "compiling: %d of %d C files done (running: %s), %.0f s elapsed",
                    done,
                    len(commands),
                    ", ".join(names[i] for i, t in enumerate(threads) if t and t.is_alive()),
                    time.perf_counter() - started,
                )
                next_report += COMPILE_PROGRESS_EVERY_S
    except BaseException:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    return [p for p in procs if p is not None], outputs


def _raise_if_disk_full(output: str) -> None:
    """A compiler that could not write its output is a disk error, not a model error."""
    if os.strerror(errno.ENOSPC) in output:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _log_compiler_output(output: str) -> None:
    for line in output.splitlines():
        if line.strip():
            log.debug("cc: %s", line)
