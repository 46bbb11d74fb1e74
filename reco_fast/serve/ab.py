"""A/B tests: named model variants served by a stable split of sessions, and their report.

:class:`ABRouter` assigns each session to a variant by the sha256 of its id (so
a session keeps its variant across requests, processes, replicas and Python
versions) and serves it through a :class:`~reco_fast.serve.impressions.LoggedRecommender`
that logs the variant's name with every impression. Each variant is a
:class:`~reco_fast.ModelHandle`, swappable on its own.

:func:`ab_report` reads an impression log and gives, per variant:

* ``requests``: impression records (recommend calls);
* ``impressions``: products shown (one per shown slot);
* ``clicks``: shown products that were clicked (a product clicked twice in one
  request counts once);
* ``ctr`` = clicks / impressions, with ``ctr_ci``, the Wilson 95% score interval
  (it treats shown slots as independent trials; slots of one request are
  correlated, so the interval is somewhat narrow when many requests have
  several clicks);
* ``coverage``: the share of requests that showed at least one product.

Standard library only (serving side).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
from collections.abc import Mapping
from typing import Any

from reco_fast.serve.handle import ModelHandle
from reco_fast.serve.impressions import (
    DEFAULT_CLICK_WINDOW,
    ImpressionLog,
    LoggedImpression,
    LoggedRecommender,
    LogRead,
    Shown,
    load_joined,
)
from reco_fast.serve.policies import Policy
from reco_fast.serve.session import SessionTracker

__all__ = ["ABRouter", "ab_report", "bucket", "format_ab_report", "wilson_interval"]

Z95 = 1.959963984540054


def bucket(session_id: str, salt: str = "") -> float:
    """A session's position in [0, 1): the first 8 bytes of sha256(salt + session_id)."""
    digest = hashlib.sha256((salt + session_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ABRouter:
    """Serve named model variants to a stable, hash-based split of sessions.

    Parameters
    ----------
    variants : mapping of name -> Model, ModelHandle or artifact path
        Each becomes (or stays) a ModelHandle; ``swap(name, new)`` replaces one.
        Other objects with ``recommend``, ``path`` and ``metadata`` (a
        :class:`~reco_fast.serve.rerank.Reranker`) are served as given.
    split : mapping of name -> share, optional
        Non-negative shares summing to 1 (default: equal shares). Sessions are
        assigned in the order of ``variants``: bucket < first share -> first, ...
    log : ImpressionLog
        Where every variant's impressions go (the variant name is in each record).
    tracker : SessionTracker, optional
        To recommend by session id (the tracker's context, scored by the variant's model).
    policy : Policy or mapping of name -> Policy, optional
        Exploration, for all variants or per variant (default: none).
    salt : str
        Prefix of the hashed session id: another salt gives an independent split.
    """

    def __init__(
        self,
        variants: Mapping[str, Any],
        split: Mapping[str, float] | None = None,
        *,
        log: ImpressionLog,
        tracker: SessionTracker | None = None,
        policy: Policy | Mapping[str, Policy | None] | None = None,
        salt: str = "",
    ):
        if not isinstance(variants, Mapping) or not variants:
            raise ValueError("variants must be a non-empty mapping of name -> model")
        names = list(variants)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"variant names must be non-empty strings, got {name!r:.40}")
        if split is None:
            split = {n: 1.0 / len(names) for n in names}
        if not isinstance(split, Mapping) or set(split) != set(names):
            raise ValueError(
                f"split must give a share for exactly the variants {names}, got "
                f"{list(split) if isinstance(split, Mapping) else split!r:.80}"
            )
        shares = []
        for n in names:
            v = split[n]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0):
                raise ValueError(f"split[{n!r}] must be a number >= 0, got {v!r:.40}")
            shares.append(float(v))
        if not math.isclose(sum(shares), 1.0, abs_tol=1e-9):
            raise ValueError(f"split shares must sum to 1, got {sum(shares)!r}")
        if not isinstance(salt, str):
            raise TypeError(f"salt must be a string, got {type(salt).__name__}")
        self.names = tuple(names)
        self.split = dict(zip(names, shares, strict=True))
        self.salt = salt
        bounds = []
        acc = 0.0
        for s in shares[:-1]:
            acc += s
            bounds.append(acc)
        self._bounds = bounds
        # paths and Models become ModelHandles (swappable); other model-like objects
        # (a reco_fast.serve.rerank.Reranker) are served as given
        self.models: dict[str, Any] = {
            n: v if isinstance(v, ModelHandle) or not _loadable(v) else ModelHandle(v)
            for n, v in variants.items()
        }
        policies = policy if isinstance(policy, Mapping) else dict.fromkeys(names, policy)
        unknown = set(policies) - set(names)
        if unknown:
            raise ValueError(f"policy names unknown variants {sorted(unknown)}")
        self.recommenders = {
            n: LoggedRecommender(self.models[n], log, policies.get(n), variant=n, tracker=tracker)
            for n in names
        }
        self.log = log
        self.tracker = tracker

    def assign(self, session_id: str) -> str:
        """The variant of the session ``session_id`` (the same for a session id, always)."""
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty string, got {session_id!r:.40}")
        shares = self.split
        i = bisect.bisect_right(self._bounds, bucket(session_id, self.salt))
        # a variant with share 0 is never chosen, even at a boundary
        while shares[self.names[i]] == 0.0:
            i = i + 1 if i + 1 < len(self.names) else i - 1
        return self.names[i]

    def recommend(
        self,
        session: str | Mapping[str, Any],
        k: int = 3,
        threshold: float | None = None,
        *,
        session_id: str | None = None,
        **kwargs: Any,
    ) -> Shown:
        """Recommend with the session's variant and log it (see ``LoggedRecommender.recommend``).

        ``session`` is a session id (with a ``tracker``) or a session dict, whose id is
        ``session_id`` or its ``"session_id"`` field and chooses the variant; ``k``,
        ``threshold`` (default: the variant model's) and ``kwargs`` go to that variant's
        recommender. Returns a ``Shown`` naming the variant and the request id.
        """
        if isinstance(session, str):
            sid = session
        elif isinstance(session, Mapping):
            sid = session.get("session_id") if session_id is None else session_id  # type: ignore[assignment]  # checked below
        else:
            raise TypeError(f"session must be a session id or a dict, got {type(session).__name__}")
        if not isinstance(sid, str) or not sid:
            raise ValueError(
                "session_id: a session dict needs a non-empty string session_id "
                "(a 'session_id' field or the session_id= argument)"
            )
        rec = self.recommenders[self.assign(sid)]
        return rec.recommend(session, k, threshold, session_id=sid, **kwargs)

    def swap(self, name: str, source: Any) -> Any:
        """Serve ``source`` (artifact path or Model) as variant ``name`` from now on."""
        if name not in self.models:
            raise KeyError(f"unknown variant {name!r:.40}; variants: {list(self.names)}")
        handle = self.models[name]
        if not isinstance(handle, ModelHandle):
            raise TypeError(f"variant {name!r} is a {type(handle).__name__}, not a ModelHandle")
        return handle.swap(source)

    def click(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """``log.click(session_id, product_id, ts)``: joined to the impression that showed it."""
        self.log.click(session_id, product_id, ts)

    def purchase(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """``log.purchase(session_id, product_id, ts)``: joined like a click."""
        self.log.purchase(session_id, product_id, ts)


def _loadable(source: Any) -> bool:
    from reco_fast.serve.model import Model

    return isinstance(source, (str, os.PathLike, Model))


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) for zero trials."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def variant_stats(impressions: list[LoggedImpression]) -> dict[str, Any]:
    """requests, impressions, clicks, ctr, ctr_ci, coverage of a list of joined impressions."""
    requests = len(impressions)
    shown = clicks = covered = 0
    models: set[str] = set()
    for imp in impressions:
        ids = [s["product_id"] for s in imp.shown]
        shown += len(ids)
        covered += bool(ids)
        clicks += len(imp.clicked.intersection(ids))
        models.add(imp.record.get("model_id", ""))
    lo, hi = wilson_interval(clicks, shown)
    return {
        "requests": requests,
        "impressions": shown,
        "clicks": clicks,
        "ctr": clicks / shown if shown else 0.0,
        "ctr_ci": [lo, hi],
        "coverage": covered / requests if requests else 0.0,
        "model_ids": sorted(models),
    }


def ab_report(
    directory: str | os.PathLike[str] | LogRead, window: float = DEFAULT_CLICK_WINDOW
) -> dict[str, Any]:
    """Per-variant requests, impressions, clicks, CTR with its Wilson 95% interval, coverage.

    Returns ``{"variants": {name: {...}}, "log": counts}`` (counts from
    :func:`~reco_fast.serve.impressions.load_joined`: unmatched outcomes, torn lines...).
    """
    impressions, counts = load_joined(directory, window)
    groups: dict[str, list[LoggedImpression]] = {}
    for imp in impressions:
        groups.setdefault(imp.variant, []).append(imp)
    return {
        "variants": {name: variant_stats(groups[name]) for name in sorted(groups)},
        "log": counts,
    }


def format_ab_report(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = [
        "| variant | requests | impressions | clicks | CTR | CTR 95% CI | coverage |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, v in report["variants"].items():
        lo, hi = v["ctr_ci"]
        lines.append(
            f"| {name} | {v['requests']:,} | {v['impressions']:,} | {v['clicks']:,} | "
            f"{v['ctr']:.4f} | [{lo:.4f}, {hi:.4f}] | {v['coverage']:.3f} |"
        )
    c = report["log"]
    lines.append("")
    lines.append(
        f"{c['impressions']:,} impression records, {c['clicks']:,} clicks joined "
        f"({c['joined_offline']:,} offline), {c['unmatched']:,} outcomes unmatched, "
        f"{c['torn']:,} torn last lines skipped."
    )
    return "\n".join(lines)
