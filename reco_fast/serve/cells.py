"""Whole-catalog top-k in time that grows with the model, not the catalog: threshold cells.

Scoring every product costs the whole forest per product (about 120 ns with the AVX2
evaluator), 120 ms for a million products. But within one page view:

- every split on a *session* feature goes the same way for every product;
- the candidate features of the ``ranking`` set (:mod:`reco_fast.features.spec`) read one
  kind of product input each (:func:`reco_fast.features.spec.candidate_axes`): the
  category (its code, "same category as the current product"), the price (the price, the
  price over the current price: monotone in the price, proved from the expression) or a
  sparse flag (viewed, 0 for all but a few products);
- so within one category, every split on a price feature flips exactly once along the
  products sorted by price, and between two flips ("a cell") every product ends in the
  same leaf of every tree and gets the same score, bit for bit.

:class:`CellIndex` holds what that needs for one model and one catalog: the forest's
leaf masks (QuickScorer's, see Lucchese et al., SIGIR 2015), each node's class, and the
catalog sorted by category then price. The C side (``compiler/topk_cells.c``) visits
categories best upper bound first, sweeps their cells and returns, from every cell
within a margin of the k-th best, the k lowest catalog positions. Those, plus the
session's viewed products, are then scored by the exact recommend kernel, so the
answer (products, order, ties by catalog order, probabilities) is the brute-force
answer: the cells only decide what not to score. A broken invariant makes the C
give up and the caller score every product.

Serving code: numpy and cffi only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reco_fast.features import spec as _spec

__all__ = ["CELLS_MIN_PRODUCTS", "CellIndex", "cell_index"]

CELLS_MIN_PRODUCTS = 2048
"""Below this many products, scoring every product is as fast (measured by
``benchmarks/test_topk.py``) and the cell index is not built."""

MAX_CELL_DEPTH = 6
"""Leaf masks are 64-bit: trees of depth 6 at most (deeper models score every product)."""

EPS_RELATIVE = 1e-9
"""Pruning margin relative to the largest possible |margin|: the C's sums in another
order differ from the exact kernel's by ~1e-16 of it, so 1e-9 can never prune a product
the exact answer contains."""

_GIVE_UP = -2
_TOO_MANY = -3


def _forest(ffi: Any, lib: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int, int]:
    """The flat evaluator's own arrays (``rq_forest``): the trees the exact kernel walks."""
    feature, threshold, leaf = (
        ffi.new("int32_t**"),
        ffi.new("float**"),
        ffi.new("double**"),
    )
    base, shape = ffi.new("double*"), ffi.new("int32_t[4]")
    lib.rq_forest(feature, threshold, leaf, base, shape)
    n_trees, depth, _, sigmoid = (int(v) for v in shape)
    nn, nl = (1 << depth) - 1, 1 << depth
    f = np.frombuffer(ffi.buffer(feature[0], 4 * n_trees * nn), dtype=np.int32).reshape(n_trees, nn)
    t = np.frombuffer(ffi.buffer(threshold[0], 4 * n_trees * nn), dtype=np.float32).reshape(
        n_trees, nn
    )
    v = np.frombuffer(ffi.buffer(leaf[0], 8 * n_trees * nl), dtype=np.float64).reshape(n_trees, nl)
    return f.copy(), t.copy(), v.copy(), float(base[0]), depth, sigmoid


def _leaf_masks(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Per node of a complete tree: the leaves still reachable if it goes left / right."""
    nn, nl = (1 << depth) - 1, 1 << depth
    full = (1 << nl) - 1
    left, right = np.empty(nn, dtype=np.uint64), np.empty(nn, dtype=np.uint64)
    for n in range(nn):
        level = (n + 1).bit_length() - 1
        width = nl >> level  # leaves under the node
        first = (n - ((1 << level) - 1)) * width
        lo = ((1 << (width // 2)) - 1) << first
        hi = ((1 << (width // 2)) - 1) << (first + width // 2)
        left[n], right[n] = full & ~hi, full & ~lo
    return left, right


class CellIndex:
    """The cell index of one model and one catalog; see the module docstring.

    Built by :func:`cell_index`; :meth:`top` returns the catalog positions the exact
    kernel must score. Immutable once built: a new catalog gets a new index, so
    requests in flight keep the one they started with.
    """

    def __init__(
        self,
        ffi: Any,
        lib: Any,
        arrays: dict[str, np.ndarray],
        scalars: dict[str, Any],
    ):
        self._ffi, self._lib = ffi, lib
        self._arrays = arrays  # the struct points into these: keep them alive
        s = ffi.new("rs_cells*")
        for name, value in scalars.items():
            setattr(s, name, value)
        for name, arr in arrays.items():
            ctype = {
                np.dtype(np.float64): "double[]",
                np.dtype(np.float32): "float[]",
                np.dtype(np.int32): "int32_t[]",
                np.dtype(np.int64): "int64_t[]",
                np.dtype(np.uint64): "uint64_t[]",
                np.dtype(np.int8): "int8_t[]",
            }[arr.dtype]
            setattr(s, name, ffi.from_buffer(ctype, arr) if arr.size else ffi.NULL)
        self._struct = s
        self._needed = ffi.new("int64_t*")

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        return int(sum(a.nbytes for a in self._arrays.values()))

    def top(
        self,
        row: Any,
        skip: list[int],
        threshold: float,
        k: int,
        cat_codes: np.ndarray,
        prices: np.ndarray,
    ) -> np.ndarray | None:
        """Catalog positions (int64, ascending) among which the exact top-k lies, the
        ``skip`` positions (viewed or excluded: the caller handles them) left out; or
        None if the cells gave up (the caller then scores every product).

        ``row`` is the session's features (the session block); ``cat_codes`` and
        ``prices`` the catalog's arrays this index was built from."""
        ffi = self._ffi
        skip_pos = np.asarray(sorted(set(skip)), dtype=np.int64)
        cap = 16 * k + 64
        for _ in range(2):
            out = np.empty(cap, dtype=np.int64)
            n = self._lib.rs_cells_top(
                self._struct,
                row,
                ffi.from_buffer("double[]", cat_codes),
                ffi.from_buffer("double[]", prices),
                ffi.from_buffer("int64_t[]", skip_pos),
                len(skip_pos),
                threshold,
                k,
                ffi.from_buffer("int64_t[]", out, require_writable=True),
                cap,
                self._needed,
            )
            if n == _TOO_MANY:
                cap = int(self._needed[0])
                continue
            if n < 0:
                if n == _GIVE_UP:
                    return None
                raise MemoryError("recommend: out of memory")
            return np.sort(out[:n])
        return None


def cell_index(
    ffi: Any,
    lib: Any,
    fs: _spec.FeatureSet,
    cat_codes: np.ndarray,
    prices: np.ndarray,
) -> CellIndex | None:
    """The cell index of the library's forest over a catalog, or None if it does not apply.

    Parameters
    ----------
    ffi, lib
        The model library's cffi module; it must export ``rq_forest`` and ``rs_cells_top``
        (``ranking`` artifacts with a flat forest, format 3).
    fs
        The model's feature set.
    cat_codes, prices
        float64 arrays of shape (n_products,): the catalog's category codes and prices,
        in catalog order.

    Returns None when the library lacks the entry points, the trees are deeper than
    :data:`MAX_CELL_DEPTH`, or a candidate feature does not decompose
    (:func:`reco_fast.features.spec.candidate_axes`).
    """
    axes = _spec.candidate_axes(fs)
    if axes is None or not hasattr(lib, "rs_cells_top") or not hasattr(lib, "rq_forest"):
        return None
    feature, threshold, leaf, base, depth, sigmoid = _forest(ffi, lib)
    if depth > MAX_CELL_DEPTH:
        return None
    n_trees, nn = feature.shape
    nl = 1 << depth
    n_session = len(fs.session)
    left, right = _leaf_masks(depth)
    go_left = np.tile(left, n_trees)
    go_right = np.tile(right, n_trees)
    full = np.uint64((1 << nl) - 1) if nl < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)

    # the candidate block of each category (any price) and of each distinct price (any
    # category), for the static category features and the static price cuts
    codes = np.unique(cat_codes)
    uprice, price_rank = np.unique(prices, return_inverse=True)
    n_cat = len(codes)
    cat_cand = np.empty((len(fs.candidate), n_cat))
    price_cand = np.empty((len(fs.candidate), len(uprice)))
    zeros = {i.name: 0.0 for i in fs.session_inputs}
    by_kind = {i.axis: i.name for i in fs.candidate_inputs}
    _spec.numpy_columns(
        fs,
        {**zeros, by_kind["category"]: codes, by_kind["price"]: uprice[0], by_kind["sparse"]: 0.0},
        cat_cand,
        block="candidate",
    )
    _spec.numpy_columns(
        fs,
        {**zeros, by_kind["category"]: codes[0], by_kind["price"]: uprice, by_kind["sparse"]: 0.0},
        price_cand,
        block="candidate",
    )

    cat_static = np.full((n_cat, n_trees), full, dtype=np.uint64)
    s_node, s_feat, s_thr = [], [], []
    c_node, c_feat, c_thr = [], [], []
    p_node, p_feat, p_thr, p_up, p_cut, p_tree = [], [], [], [], [], []
    for t in range(n_trees):
        for n in range(nn):
            g, f, th = t * nn + n, int(feature[t, n]), threshold[t, n]
            if np.isinf(th):  # +inf (padding): every value goes left; -inf: every one right
                cat_static[:, t] &= left[n] if th > 0 else right[n]
            elif f < n_session:
                s_node.append(g)
                s_feat.append(f)
                s_thr.append(th)
            else:
                j = f - n_session
                ax = axes[j]
                if ax.axis == "price":
                    p_node.append(g)
                    p_feat.append(j)
                    p_thr.append(th)
                    p_up.append(1 if ax.direction > 0 else 0)
                    p_tree.append(t)
                    if ax.reads_session:
                        p_cut.append(-1)
                    else:
                        goes_left = price_cand[j].astype(np.float32) <= th
                        flips = ~goes_left if ax.direction > 0 else goes_left
                        p_cut.append(int(np.argmax(flips)) if flips.any() else len(uprice))
                elif ax.axis == "category" and not ax.reads_session:
                    right_side = cat_cand[j].astype(np.float32) > th
                    cat_static[:, t] &= np.where(right_side, right[n], left[n])
                else:  # per category and request (reads the session), or sparse / constant
                    c_node.append(g)
                    c_feat.append(j)
                    c_thr.append(th)
    # session-dependent price nodes grouped by feature, in the order their cuts rise
    # (the C gallops from one cut to the next); static ones first
    thr = np.asarray(p_thr, dtype=np.float64)
    up = np.asarray(p_up, dtype=bool)
    perm = np.lexsort((np.where(up, thr, -thr), np.asarray(p_feat), np.asarray(p_cut) < 0))
    p_node, p_feat, p_thr, p_up, p_cut, p_tree = (
        [seq[i] for i in perm] for seq in (p_node, p_feat, p_thr, p_up, p_cut, p_tree)
    )
    p_tree_arr = np.asarray(p_tree, dtype=np.int32)
    tree_pnodes = np.argsort(p_tree_arr, kind="stable").astype(np.int32)
    tree_pstart = np.searchsorted(p_tree_arr[tree_pnodes], np.arange(n_trees + 1)).astype(np.int32)

    # the catalog by category, price rank, position
    cat_of = np.searchsorted(codes, cat_codes)
    rank = price_rank.astype(np.int32)
    # by category, then price rank, then position (a stable sort keeps positions ascending)
    order = np.argsort(cat_of * np.int64(len(uprice)) + rank, kind="stable").astype(np.int32)
    cat_start = np.searchsorted(cat_of[order], np.arange(n_cat + 1)).astype(np.int64)
    bound = abs(base) + float(np.abs(leaf).max(axis=1).sum())
    arrays: dict[str, np.ndarray] = {
        "leaf": np.ascontiguousarray(leaf.ravel()),
        "go_left": go_left,
        "go_right": go_right,
        "s_node": np.asarray(s_node, dtype=np.int32),
        "s_feat": np.asarray(s_feat, dtype=np.int32),
        "s_thr": np.asarray(s_thr, dtype=np.float32),
        "c_node": np.asarray(c_node, dtype=np.int32),
        "c_feat": np.asarray(c_feat, dtype=np.int32),
        "c_thr": np.asarray(c_thr, dtype=np.float32),
        "p_node": np.asarray(p_node, dtype=np.int32),
        "p_feat": np.asarray(p_feat, dtype=np.int32),
        "p_thr": np.asarray(p_thr, dtype=np.float32),
        "p_up": np.asarray(p_up, dtype=np.int8),
        "p_cut": np.asarray(p_cut, dtype=np.int32),
        "tree_pstart": tree_pstart,
        "tree_pnodes": tree_pnodes,
        "cat_code": np.ascontiguousarray(codes, dtype=np.float64),
        "cat_static": np.ascontiguousarray(cat_static.ravel()),
        "cat_start": cat_start,
        "order": order,
        "rank": np.ascontiguousarray(rank[order]),
        "uprice": np.ascontiguousarray(uprice, dtype=np.float64),
    }
    scalars = {
        "n_trees": n_trees,
        "n_nodes": nn,
        "n_leaves": nl,
        "sigmoid": sigmoid,
        "base": base,
        "eps": EPS_RELATIVE * (1.0 + bound),
        "n_snodes": len(s_node),
        "n_cnodes": len(c_node),
        "n_pnodes": len(p_node),
        "n_candidate": len(fs.candidate),
        "n_cat": n_cat,
        "n_uprice": len(uprice),
    }
    return CellIndex(ffi, lib, arrays, scalars)
