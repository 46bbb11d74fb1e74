"""The feature specification: every feature written once, as an expression over raw inputs.

A feature is a name and an expression in a small arithmetic language (Python
syntax: numbers, input names, ``+ - * /``, comparisons, ``and``, ``clip(x, lo,
hi)`` and ``max(a, b)``). From the one expression this module generates the
three implementations that must agree bit for bit:

- :func:`python_expander`: a scalar Python function (one page view);
- :func:`numpy_columns`: vectorised numpy (training, batches);
- :func:`c_session_kernel` / :func:`c_candidate_kernel`: C for the compiled
  single-page-view and whole-catalog recommend paths.

Every operation is an IEEE double operation evaluated in the same order in all
three (the C is compiled with ``-ffp-contract=off``; comparisons give exactly 0.0
or 1.0), so agreement holds by construction and the tests check it. NaN (a
missing value, valid for models that route them) propagates through arithmetic,
``clip`` and ``max`` and makes a comparison 0.0, on every path.

Inputs are the raw numbers a feature reads. *Session* inputs come from the page
view (its fields, categories as vocabulary codes); *candidate* inputs describe
the product being scored and are computed per product by the recommend kernel
from the catalog arrays named in :attr:`Input.c_catalog`.

:func:`spec_hash` digests the whole specification; artifacts record it and
``load`` refuses an artifact built with other definitions.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CANDIDATE",
    "CANDIDATE_INPUTS",
    "FEATURE_SETS",
    "SEED",
    "SESSION_INPUTS",
    "Axis",
    "Feature",
    "FeatureSet",
    "Input",
    "candidate_axes",
    "spec_hash",
]


@dataclass(frozen=True)
class Input:
    """One raw number a feature reads.

    ``name`` is the identifier used in expressions; ``source`` says where it
    comes from (a raw field of the seed's schema, or a catalog column);
    ``c_catalog`` is, for candidate inputs, the C expression that reads it for
    catalog position ``p`` inside the recommend kernel.
    """

    name: str
    source: str
    doc: str
    c_catalog: str = ""
    axis: str = ""
    """For candidate inputs, how it varies over the catalog (:func:`candidate_axes`):
    ``"category"`` (one value per category), ``"price"`` (the product's price) or
    ``"sparse"`` (0 except for a few products per session: those viewed)."""


@dataclass(frozen=True)
class Feature:
    """One model feature: its column name, its expression, and what it means."""

    name: str
    expr: str
    doc: str


SESSION_INPUTS: tuple[Input, ...] = (
    Input("cat", "current_category", "the current product's category, as a vocabulary code"),
    Input("price", "current_price", "the current product's price, dollars"),
    Input("cart", "products_in_cart", "products in the cart"),
    Input("dev", "device_type", "device type, as a vocabulary code"),
    Input("trf", "traffic_source", "traffic source, as a vocabulary code"),
    Input("t", "time_on_page_sec", "time on the current page, seconds"),
    Input("sc", "scroll_depth", "scroll depth, 0 to 1"),
    Input("img", "clicked_product_image", "1 if the product image was clicked, else 0"),
    Input("mins", "session_length_mins", "session length, minutes"),
    Input("viewed", "products_viewed_count", "products viewed in the session"),
)
CANDIDATE_INPUTS: tuple[Input, ...] = (
    Input("rcat", "catalog category", "the candidate's category code", "cat_codes[p]", "category"),
    Input("rprice", "catalog price", "the candidate's price, dollars", "prices[p]", "price"),
    Input(
        "already",
        "current_product_id, prev_product_1..3",
        "1 if the session viewed the candidate (current or previous three)",
        "(viewed[p] ? 1.0 : 0.0)",
        "sparse",
    ),
)

MIN_PRICE_FOR_RATIO = 0.01
"""rec_price_ratio divides by max(current_price, 0.01) so a free product cannot divide by 0."""

SEED: tuple[Feature, ...] = (
    Feature("category_enc", "cat", "current category code (the seed's LabelEncoder)"),
    Feature("current_price", "price", "current product price"),
    Feature("products_in_cart", "cart", "products in the cart"),
    Feature("device_enc", "dev", "device type code"),
    Feature("traffic_enc", "trf", "traffic source code"),
    Feature("time_on_page_sec", "t", "seconds on the current page"),
    Feature("scroll_depth", "sc", "scroll depth"),
    Feature("clicked_product_image", "img", "image clicked"),
    Feature("session_length_mins", "mins", "session length in minutes"),
    Feature("products_viewed_count", "viewed", "products viewed"),
    Feature("has_items_in_cart", "cart > 0", "the cart is not empty"),
    Feature("high_engagement", "t >= 60 and sc >= 0.6", "a minute or more, scrolled 60%"),
    Feature("premium_product", "price > 100", "the seed's premium cut, $100"),
    Feature("low_price_product", "price < 30", "the seed's low-price cut, $30"),
    Feature("multi_product_session", "viewed >= 3", "three or more products viewed"),
    Feature("engagement_score", "clip(t / 300 * sc, 0.0, 1.0)", "seed: time/300 x scroll"),
    Feature("engaged_shopper", "mins >= 10 and viewed >= 3", "long session, several products"),
    Feature("quick_browser", "t < 30 and sc < 0.3", "short visit, little scrolling"),
    Feature("session_intensity", "viewed / (mins + 1)", "products viewed per minute (+1)"),
)
CANDIDATE: tuple[Feature, ...] = (
    Feature("rec_category_enc", "rcat", "the candidate's category code"),
    Feature("rec_price", "rprice", "the candidate's price"),
    Feature("rec_same_category", "rcat == cat", "candidate in the current category"),
    Feature(
        "rec_price_ratio",
        f"rprice / max(price, {MIN_PRICE_FOR_RATIO!r})",
        "candidate price over current price",
    ),
    Feature("rec_already_viewed", "already", "the session viewed the candidate"),
)


@dataclass(frozen=True)
class FeatureSet:
    """An ordered list of features: the session block, then the candidate block."""

    name: str
    session: tuple[Feature, ...]
    candidate: tuple[Feature, ...]
    session_inputs: tuple[Input, ...] = SESSION_INPUTS
    candidate_inputs: tuple[Input, ...] = CANDIDATE_INPUTS

    @property
    def features(self) -> tuple[Feature, ...]:
        return self.session + self.candidate

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def inputs(self) -> tuple[Input, ...]:
        return self.session_inputs + (self.candidate_inputs if self.candidate else ())

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)


FEATURE_SETS: dict[str, FeatureSet] = {
    "ranking": FeatureSet("ranking", SEED, CANDIDATE),
    "seed": FeatureSet("seed", SEED, ()),
}


# ---- the expression language --------------------------------------------------------------

_BINOPS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMPOPS: dict[type, str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
}
_CALLS = {"clip": 3, "max": 2}


def _parse(expr: str, names: Sequence[str]) -> ast.expr:
    """Parse and check one expression: only the language above, only known inputs."""
    tree = ast.parse(expr, mode="eval").body
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names and node.id not in _CALLS:
                raise ValueError(f"feature expression {expr!r} reads unknown input {node.id!r}")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or len(node.args) != _CALLS.get(
                node.func.id, -1
            ):
                raise ValueError(f"feature expression {expr!r}: unsupported call")
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in _CMPOPS:
                raise ValueError(f"feature expression {expr!r}: one comparison at a time")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise ValueError(f"feature expression {expr!r}: unsupported operator")
        elif isinstance(node, ast.BoolOp):
            if not isinstance(node.op, ast.And):
                raise ValueError(f"feature expression {expr!r}: only 'and' is supported")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
                raise ValueError(f"feature expression {expr!r}: only numeric constants")
        elif not isinstance(node, (ast.expr_context, ast.operator, ast.cmpop, ast.boolop)):
            raise ValueError(f"feature expression {expr!r}: {type(node).__name__} not supported")
    return tree


def _render(node: ast.expr, target: str) -> str:
    """One expression as C, scalar Python or numpy source, fully parenthesised."""

    def r(n: ast.expr) -> str:
        return _render(n, target)

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, (int, float))  # _parse allows numbers only
        value = float(node.value)
        return value.hex() if target == "c" else repr(value)
    if isinstance(node, ast.BinOp):
        return f"({r(node.left)} {_BINOPS[type(node.op)]} {r(node.right)})"
    if isinstance(node, ast.Compare):
        return f"({r(node.left)} {_CMPOPS[type(node.ops[0])]} {r(node.comparators[0])})"
    if isinstance(node, ast.BoolOp):
        joiner = {"c": " && ", "python": " and ", "numpy": " & "}[target]
        return "(" + joiner.join(r(v) for v in node.values) + ")"
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    args = [r(a) for a in node.args]
    if node.func.id == "max":
        a, b = args
        if target == "numpy":
            return f"_np.maximum({a}, {b})"
        # NaN (a missing value, for models that route them) propagates, as numpy's
        # maximum does: max(NaN, b) and max(a, NaN) are NaN on every path
        if target == "c":
            return f"(({a} != {a} || {a} > {b}) ? {a} : {b})"
        return f"({a} if ({a} != {a} or {a} > {b}) else {b})"
    x, lo, hi = args
    if target == "numpy":
        return f"_np.clip({x}, {lo}, {hi})"
    if target == "c":
        return f"({x} < {lo} ? {lo} : ({x} > {hi} ? {hi} : {x}))"
    return f"({lo} if {x} < {lo} else ({hi} if {x} > {hi} else {x}))"


@functools.cache
def _parsed(fs: FeatureSet) -> tuple[ast.expr, ...]:
    names = fs.input_names
    return tuple(_parse(f.expr, names) for f in fs.features)


def python_expander(fs: FeatureSet) -> Callable[..., list[float]]:
    """A function of the inputs (in :attr:`FeatureSet.input_names` order) -> the feature row.

    The row is a list of Python floats, one per feature; comparisons give 1.0/0.0.
    """
    body = ", ".join(f"float({_render(t, 'python')})" for t in _parsed(fs))
    args = ", ".join(fs.input_names)
    # inputs become doubles first, as cffi converts them for the C kernel
    source = f"def expand({args}):\n    {args}, = map(float, ({args},))\n    return [{body}]\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<reco_fast feature set {fs.name}>", "exec"), namespace)
    expand: Callable[..., list[float]] = namespace["expand"]
    return expand


def numpy_columns(
    fs: FeatureSet, inputs: Mapping[str, Any], out: np.ndarray, block: str = "all"
) -> np.ndarray:
    """Fill ``out`` from input columns (each shape (n,), float64; scalars broadcast).

    ``block="all"``: ``out`` has shape (n, n_features), one column per feature.
    ``block="candidate"``: ``out`` has shape (n_candidate_features, n), the
    candidate block feature-major (the layout the recommend kernel reads).
    """
    namespace: dict[str, Any] = {"_np": np, **inputs}
    for j, code in enumerate(_numpy_code(fs, block)):
        value = eval(code, {"__builtins__": {}}, namespace)
        if block == "candidate":
            out[j] = value
        else:
            out[:, j] = value
    return out


@functools.cache
def _numpy_code(fs: FeatureSet, block: str) -> tuple[Any, ...]:
    parsed = _parsed(fs)[len(fs.session) :] if block == "candidate" else _parsed(fs)
    return tuple(compile(_render(t, "numpy"), "<feature>", "eval") for t in parsed)


def c_session_kernel(fs: FeatureSet) -> tuple[str, str]:
    """C ``rs_features(<inputs>, double* x)`` writing every feature; (definition, argument list)."""
    lines = [f"  x[{j}] = {_render(t, 'c')};" for j, t in enumerate(_parsed(fs))]
    params = ", ".join(f"double {a}" for a in fs.input_names)
    source = f"void rs_features({params}, double* x) {{\n" + "\n".join(lines) + "\n}\n"
    return source, ", ".join(fs.input_names)


def c_candidate_kernel(fs: FeatureSet) -> str:
    """C ``rs_candidate_rest``: the candidate block of m catalog products, feature-major.

    Session inputs that candidate features read are taken from the session row
    (the feature whose expression is exactly that input), so the recommend
    kernel needs only the row, the catalog arrays and the viewed flags.
    """
    session_index = {
        f.expr: j for j, f in enumerate(fs.session) if f.expr in {i.name for i in fs.session_inputs}
    }
    parsed = _parsed(fs)[len(fs.session) :]
    used = {n.id for t in parsed for n in ast.walk(t) if isinstance(n, ast.Name)}
    head = []
    for inp in fs.session_inputs:
        if inp.name in used:
            if inp.name not in session_index:
                raise ValueError(f"candidate features read {inp.name!r}, which no feature copies")
            head.append(f"  const double {inp.name} = row[{session_index[inp.name]}];")
    per_product = [
        f"    const double {inp.name} = {inp.c_catalog};"
        for inp in fs.candidate_inputs
        if inp.name in used
    ]
    writes = [f"    rest[{j} * m + i] = {_render(t, 'c')};" for j, t in enumerate(parsed)]
    return (
        "static void rs_candidate_rest(const double* row, const double* cat_codes,\n"
        "                              const double* prices, const int64_t* cand, size_t m,\n"
        "                              const uint8_t* viewed, double* rest) {\n"
        + "\n".join(head)
        + "\n  for (size_t i = 0; i < m; ++i) {\n    const int64_t p = cand[i];\n"
        + "\n".join(per_product + writes)
        + "\n  }\n}\n"
    )


def spec_hash(fs: FeatureSet) -> str:
    """sha256 of everything that defines the feature set: names, expressions, inputs."""
    doc = {
        "name": fs.name,
        "features": [[f.name, f.expr] for f in fs.features],
        "inputs": [[i.name, i.source, i.c_catalog] for i in fs.inputs],
        "language": 1,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ---- how candidate features vary over a catalog ------------------------------------------


@dataclass(frozen=True)
class Axis:
    """How one candidate feature varies over the catalog, for the whole-catalog top-k.

    ``axis`` is the one kind of candidate input it reads (see :attr:`Input.axis`), or
    ``"none"``; ``reads_session``: whether its value also depends on the page view;
    ``direction``: for ``axis == "price"``, +1 if the feature never decreases as the
    price grows, -1 if it never increases (proved from the expression, for every
    session, in IEEE double arithmetic: every operation used is monotone).
    """

    axis: str
    reads_session: bool
    direction: int = 0


def _positive(node: ast.expr, varying: set[str]) -> bool:
    """True if the expression is > 0 whatever its inputs (a positive constant, or
    ``max(anything, positive)``) and reads no varying input."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and node.value > 0
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "max":
        return any(_positive(a, varying) for a in node.args) and not any(
            isinstance(n, ast.Name) and n.id in varying for a in node.args for n in ast.walk(a)
        )
    return False


def _combine(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    if a == 0 or a == b:
        return b
    return a if b == 0 else None


def _direction(node: ast.expr, var: str) -> int | None:
    """+1 / -1 if ``node`` is non-decreasing / non-increasing in input ``var``, 0 if it
    does not read it, None if monotonicity is not proved."""
    if isinstance(node, ast.Name):
        return 1 if node.id == var else 0
    if isinstance(node, ast.Constant):
        return 0
    if isinstance(node, ast.BinOp):
        left, right = _direction(node.left, var), _direction(node.right, var)
        if isinstance(node.op, ast.Add):
            return _combine(left, right)
        if isinstance(node.op, ast.Sub):
            return _combine(left, None if right is None else -right)
        if isinstance(node.op, (ast.Mult, ast.Div)):
            if right == 0 and _positive(node.right, {var}):
                return left
            if isinstance(node.op, ast.Mult) and left == 0 and _positive(node.left, {var}):
                return right
            return 0 if left == right == 0 else None
        return None
    if isinstance(node, ast.Compare):
        left, right = _direction(node.left, var), _direction(node.comparators[0], var)
        op = type(node.ops[0])
        if left is None or right is None:
            return None
        if left == right == 0:
            return 0
        if op is ast.Eq or (left != 0 and right != 0):
            return None
        # an indicator [a < c] falls as a rises; [c < b] rises with b
        if left != 0:
            return -left if op in (ast.Lt, ast.LtE) else left
        return right if op in (ast.Lt, ast.LtE) else -right
    if isinstance(node, ast.BoolOp):
        out: int | None = 0
        for value in node.values:
            out = _combine(out, _direction(value, var))
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        dirs = [_direction(a, var) for a in node.args]
        if node.func.id == "max":
            return _combine(dirs[0], dirs[1])
        if node.func.id == "clip" and dirs[1] == dirs[2] == 0:
            return dirs[0]
    return None


def candidate_axes(fs: FeatureSet) -> tuple[Axis, ...] | None:
    """How each candidate feature varies over a catalog, or None if some feature reads
    two kinds of candidate input, or a price without proved monotonicity (the
    whole-catalog top-k then scores every product)."""
    kinds = {i.name: i.axis for i in fs.candidate_inputs}
    session = {i.name for i in fs.session_inputs}
    out = []
    for tree in _parsed(fs)[len(fs.session) :]:
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        axes = {kinds[n] for n in names if n in kinds}
        if len(axes) > 1 or "" in axes:
            return None
        axis = axes.pop() if axes else "none"
        direction = 0
        if axis == "price":
            var = next(n for n in names if kinds.get(n) == "price")
            found = _direction(tree, var)
            if found is None or found == 0:
                return None
            direction = found
        out.append(Axis(axis, bool(names & session), direction))
    return tuple(out)
