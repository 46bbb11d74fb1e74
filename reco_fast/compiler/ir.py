"""Intermediate form: treelite's model as padded, complete binary trees in flat arrays.

Every tree is padded to the forest's maximum depth D: a leaf above depth D
becomes a node whose threshold is +inf (every finite value goes left) with
the leaf repeated below it. A complete tree needs no child pointers: node n's
children are 2n+1 and 2n+2, so evaluation is D compares and no branches.

Thresholds are stored as float32 rounded *down*: inputs reach the trees as
float32 (as in scikit-learn), and for a float32 x and a float64 t,
``x <= t`` holds exactly when ``x <= largest_float32_not_above(t)``. The
comparison is therefore exact in float32 and 8 rows fit one AVX2 register.

Models that compare float64 inputs (scikit-learn's HistGradientBoosting*, LightGBM:
``precision="float64"``) keep their thresholds as float64, exactly (``x < t`` becomes
``x <= `` the largest double below t), and are evaluated in double
(``flat64_template.c``), LightGBM's near-zero inputs read as 0 (``zero_snap``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_FLAT_DEPTH",
    "Forest",
    "SparseForest",
    "TooDeep",
    "UnsupportedForest",
    "from_treelite",
    "sparse_from_treelite",
    "thresholds_by_feature",
]

MAX_FLAT_DEPTH = 8
"""Deeper trees are left to tl2cgen: a complete tree of depth 9 has 511 nodes."""


class UnsupportedForest(ValueError):
    """The model uses something the flat evaluator does not implement."""


class TooDeep(UnsupportedForest):
    """Trees deeper than MAX_FLAT_DEPTH: no complete-tree arrays (float64 models are read
    as a :class:`SparseForest` instead)."""


@dataclass(frozen=True)
class Forest:
    """Trees in breadth-first order: feature[t, n], threshold[t, n], leaf[t, l]."""

    n_features: int
    depth: int
    feature: np.ndarray  # int32 (n_trees, 2**depth - 1)
    # float32 (n_trees, 2**depth - 1), rounded down; float64 (exact) when precision is
    threshold: np.ndarray
    leaf: np.ndarray  # float64 (n_trees, 2**depth)
    base_score: float
    link: str = "sigmoid"  # "sigmoid" (a probability) or "identity" (a score or value)
    # bool (n_trees, 2**depth - 1): the node sends NaN right; None: NaN is never an input
    nan_right: np.ndarray | None = None
    # "float32": inputs rounded to float32 and compared so; "float64": compared as doubles
    precision: str = "float32"
    zero_snap: float = 0.0  # > 0: |x| <= zero_snap reads as 0 (float64 only)

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    def predict_margin(self, X: np.ndarray) -> np.ndarray:
        """Reference evaluation in numpy (for tests): the margin before the sigmoid."""
        x32 = np.asarray(X, dtype=np.float32 if self.precision == "float32" else np.float64)
        if self.zero_snap > 0:
            x32 = np.where(np.abs(x32) <= self.zero_snap, 0.0, x32)
        rows = np.arange(len(x32))
        total = np.zeros(len(x32))
        for t in range(self.n_trees):
            idx = np.zeros(len(x32), dtype=np.int64)
            for level in range(self.depth):
                node = (1 << level) - 1 + idx
                v = x32[rows, self.feature[t, node]]
                right = v > self.threshold[t, node]
                if self.nan_right is not None:
                    right |= np.isnan(v) & self.nan_right[t, node]
                idx = 2 * idx + right
            total += self.leaf[t, idx]
        return total + self.base_score


def round_down_f32(t: np.ndarray) -> np.ndarray:
    """Largest float32 not above each float64 threshold (+inf stays +inf)."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):
        t32 = t.astype(np.float32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _tree_depth(nodes: dict[int, dict[str, Any]], node: int = 0) -> int:
    n = nodes[node]
    if "leaf_value" in n:
        return 0
    return 1 + max(_tree_depth(nodes, n["left_child"]), _tree_depth(nodes, n["right_child"]))


_EMPTY_THRESHOLD = re.compile(r'"threshold":\s*,')


def model_json(model: Any) -> dict[str, Any]:
    """treelite's model as a dict (its JSON dump).

    treelite 4.8 writes an infinite threshold as nothing (``"threshold": ,``, which is
    not JSON): HistGradientBoosting's split "missing values right, every number left"
    has threshold +inf. Those thresholds are read from the tree's own arrays instead.
    """
    text, n = _EMPTY_THRESHOLD.subn('"threshold": null,', model.dump_as_json())
    d = json.loads(text)
    if n:
        for i, tree in enumerate(d["trees"]):
            values = None
            for node in tree["nodes"]:
                if "threshold" in node and node["threshold"] is None:
                    if values is None:
                        values = model.get_tree_accessor(i).get_field("threshold")
                    node["threshold"] = float(values[node["node_id"]])
    return d


def thresholds_by_feature(d: dict[str, Any]) -> list[np.ndarray]:
    """Per feature, every threshold the trees of a treelite JSON dump compare it with."""
    found: list[list[float]] = [[] for _ in range(int(d["num_feature"]))]
    for tree in d["trees"]:
        for n in tree["nodes"]:
            if "split_feature_id" in n and "threshold" in n:
                found[int(n["split_feature_id"])].append(float(n["threshold"]))
    return [np.unique(np.asarray(v, dtype=np.float64)) for v in found]


def from_treelite(
    model: Any,
    d: dict[str, Any] | None = None,
    *,
    nan_routed: bool = False,
    precision: str = "float32",
    zero_snap: float = 0.0,
) -> Forest:
    """Read treelite's JSON dump into a Forest; refuse what the evaluator cannot do exactly.

    ``d`` is :func:`model_json` of the model, when the caller already has it. Inputs are
    float32 (the evaluator compares float32 values), so ``x < t`` (XGBoost's splits) is
    ``x <= t'`` with t' the largest float32 below t. With ``nan_routed``, each node's
    learned direction for NaN (treelite's ``default_left``) is kept in ``nan_right``.
    With ``precision="float64"`` (models that compare float64 inputs), thresholds stay
    float64 and ``x < t`` is ``x <= `` the largest double below t; ``zero_snap`` > 0 (float64
    only): inputs with ``|x| <= zero_snap`` read as 0.
    """
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
    if zero_snap and precision != "float64":
        raise UnsupportedForest("zero_snap is only implemented for float64 inputs")
    d = model_json(model) if d is None else d
    if d.get("num_target") != 1:
        raise UnsupportedForest(f"{d.get('num_target')} targets: only one is supported")
    task, post = d.get("task_type"), d.get("postprocessor")
    if task == "kBinaryClf":
        if post != "sigmoid" or float(d.get("sigmoid_alpha", 1.0)) != 1.0:
            raise UnsupportedForest(f"postprocessor {post!r} is not sigmoid(x)")
        link = "sigmoid"
    elif task in ("kRegressor", "kLearningToRank"):
        if post != "identity":
            raise UnsupportedForest(f"postprocessor {post!r} is not the identity")
        link = "identity"
    else:
        raise UnsupportedForest(
            f"task {task!r} is not binary classification, regression or ranking"
        )
    if d.get("average_tree_output"):
        raise UnsupportedForest("averaged tree outputs are not supported")
    base = d.get("base_scores", [0.0])
    if len(base) != 1:
        raise UnsupportedForest("expected one base score")
    trees = []
    for t in d["trees"]:
        nodes = {n["node_id"]: n for n in t["nodes"]}
        for n in nodes.values():
            if "leaf_value" in n:
                if isinstance(n["leaf_value"], list):
                    raise UnsupportedForest("vector leaves are not supported")
                continue
            if n.get("node_type") != "numerical_test_node" or n.get("comparison_op") not in (
                "<=",
                "<",
            ):
                raise UnsupportedForest(
                    f"split {n.get('node_type')!r} {n.get('comparison_op')!r} is not 'x <= t'"
                )
        trees.append(nodes)
    depth = max(1, max(_tree_depth(nodes) for nodes in trees))
    if depth > MAX_FLAT_DEPTH:
        raise TooDeep(f"trees of depth {depth} exceed {MAX_FLAT_DEPTH}")
    n_nodes, n_leaves = (1 << depth) - 1, 1 << depth
    feature = np.zeros((len(trees), n_nodes), dtype=np.int32)
    threshold64 = np.full((len(trees), n_nodes), np.inf)
    strict = np.zeros((len(trees), n_nodes), dtype=bool)  # x < t
    nan_right = np.zeros((len(trees), n_nodes), dtype=bool)
    leaf = np.zeros((len(trees), n_leaves), dtype=np.float64)
    for t, nodes in enumerate(trees):
        # (treelite node id, flat position); a leaf met above the last level fills its subtree
        stack = [(0, 0, 0)]
        while stack:
            node_id, pos, level = stack.pop()
            node = nodes[node_id]
            if "leaf_value" in node:
                first = (pos - ((1 << level) - 1)) << (depth - level)
                leaf[t, first : first + (1 << (depth - level))] = float(node["leaf_value"])
                # padded nodes below keep feature 0 / threshold +inf: always left
                continue
            feature[t, pos] = int(node["split_feature_id"])
            threshold64[t, pos] = float(node["threshold"])
            strict[t, pos] = node["comparison_op"] == "<"
            nan_right[t, pos] = not node.get("default_left", True)
            stack.append((node["left_child"], 2 * pos + 1, level + 1))
            stack.append((node["right_child"], 2 * pos + 2, level + 1))
    if precision == "float64":
        # x < t for a double x: x <= the largest double below t
        threshold = threshold64.copy()
        threshold[strict] = np.nextafter(threshold64[strict], -np.inf)
    else:
        threshold = round_down_f32(threshold64)
        # x < t for float32 x: x <= the largest float32 below t (t itself when t is a float32)
        exact = strict & (threshold.astype(np.float64) == threshold64)
        threshold[exact] = np.nextafter(threshold[exact], np.float32(-np.inf))
    return Forest(
        int(d["num_feature"]),
        depth,
        feature,
        threshold,
        leaf,
        float(base[0]),
        link,
        nan_right if nan_routed else None,
        precision=precision,
        zero_snap=float(zero_snap) if precision == "float64" else 0.0,
    )


@dataclass(frozen=True)
class SparseForest:
    """Trees deeper than MAX_FLAT_DEPTH that compare float64 inputs (LightGBM's leaf-wise
    trees), as they are: one node array for the whole forest.

    An internal node's children sit side by side, ``child[n]`` (left) and ``child[n] + 1``
    (right). A leaf is its own child, with threshold +inf and NaN sent left, so a row that
    reached it stays there: every row of a tree takes ``tree_depth[t]`` steps, branch-free.
    """

    n_features: int
    feature: np.ndarray  # int32 (n_nodes,)
    threshold: np.ndarray  # float64 (n_nodes,), exact (x < t: the double below t)
    child: np.ndarray  # int32 (n_nodes,)
    nan_right: np.ndarray  # bool (n_nodes,); all False when NaN is never an input
    value: np.ndarray  # float64 (n_nodes,): the leaf's value (0 at internal nodes)
    root: np.ndarray  # int32 (n_trees,)
    tree_depth: np.ndarray  # int32 (n_trees,)
    base_score: float
    link: str = "sigmoid"
    nan_routed: bool = False
    zero_snap: float = 0.0
    precision: str = "float64"

    @property
    def n_trees(self) -> int:
        return int(self.root.shape[0])

    def predict_margin(self, X: np.ndarray) -> np.ndarray:
        """Reference evaluation in numpy (for tests): the margin before the sigmoid."""
        x = np.asarray(X, dtype=np.float64)
        if self.zero_snap > 0:
            x = np.where(np.abs(x) <= self.zero_snap, 0.0, x)
        rows = np.arange(len(x))
        total = np.zeros(len(x))
        for t in range(self.n_trees):
            node = np.full(len(x), self.root[t], dtype=np.int64)
            for _ in range(int(self.tree_depth[t])):
                v = x[rows, self.feature[node]]
                right = (v > self.threshold[node]) | (np.isnan(v) & self.nan_right[node])
                node = self.child[node] + right
            total += self.value[node]
        return total + self.base_score


def sparse_from_treelite(
    model: Any,
    d: dict[str, Any] | None = None,
    *,
    nan_routed: bool = False,
    zero_snap: float = 0.0,
) -> SparseForest:
    """Read treelite's JSON dump into a :class:`SparseForest` (float64 compares only).

    The model's checks are :func:`from_treelite`'s (its task, postprocessor, splits); the
    trees may be of any depth.
    """
    d = model_json(model) if d is None else d
    # from_treelite's checks, with the depth limit lifted: the same refusals
    head = {**d, "trees": [{"nodes": [{"node_id": 0, "leaf_value": 0.0}]}]}
    shallow = from_treelite(model, head, nan_routed=nan_routed, precision="float64")
    for t in d["trees"]:
        for n in t["nodes"]:
            if "leaf_value" in n:
                if isinstance(n["leaf_value"], list):
                    raise UnsupportedForest("vector leaves are not supported")
            elif n.get("node_type") != "numerical_test_node" or n.get("comparison_op") not in (
                "<=",
                "<",
            ):
                raise UnsupportedForest(
                    f"split {n.get('node_type')!r} {n.get('comparison_op')!r} is not 'x <= t'"
                )
    feature: list[int] = []
    threshold: list[float] = []
    child: list[int] = []
    nan_right: list[bool] = []
    value: list[float] = []
    root: list[int] = []
    depths: list[int] = []

    def new_node() -> int:
        feature.append(0)
        threshold.append(np.inf)
        child.append(len(child))
        nan_right.append(False)
        value.append(0.0)
        return len(feature) - 1

    for tree in d["trees"]:
        nodes = {n["node_id"]: n for n in tree["nodes"]}
        root.append(new_node())
        depths.append(_tree_depth(nodes))
        stack = [(0, root[-1])]
        while stack:
            node_id, pos = stack.pop()
            node = nodes[node_id]
            if "leaf_value" in node:
                value[pos] = float(node["leaf_value"])  # its own child, threshold +inf
                continue
            left = new_node()
            right = new_node()
            assert right == left + 1
            t = float(node["threshold"])
            feature[pos] = int(node["split_feature_id"])
            threshold[pos] = np.nextafter(t, -np.inf) if node["comparison_op"] == "<" else t
            child[pos] = left
            nan_right[pos] = nan_routed and not node.get("default_left", True)
            stack.append((node["left_child"], left))
            stack.append((node["right_child"], right))
    return SparseForest(
        int(d["num_feature"]),
        np.asarray(feature, dtype=np.int32),
        np.asarray(threshold, dtype=np.float64),
        np.asarray(child, dtype=np.int32),
        np.asarray(nan_right, dtype=bool),
        np.asarray(value, dtype=np.float64),
        np.asarray(root, dtype=np.int32),
        np.asarray(depths, dtype=np.int32),
        shallow.base_score,
        shallow.link,
        nan_routed,
        float(zero_snap),
    )
