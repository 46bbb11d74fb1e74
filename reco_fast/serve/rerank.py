"""Two-stage recommendations: one model retrieves the top candidates, another orders them.

A model retrained from an impression log has seen only the products the logging
policy could show (its top ``top_m`` candidates, with exploration); outside that
set it extrapolates, and off-policy evaluation cannot score it there (no
logged propensity). :class:`Reranker` keeps it inside: the retrieval model (the
one that served the log) picks its top ``top_m``, the re-ranker shows its top
``k`` of those. Serving side (numpy and cffi only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reco_fast.serve.recommend import EXCLUDABLE, Recommendation

__all__ = ["Reranker"]


class Reranker:
    """``retrieval``'s top ``top_m`` products for a session, re-ordered by ``model``.

    Stands where a Model is expected by :class:`~reco_fast.serve.impressions.LoggedRecommender`
    and :class:`~reco_fast.serve.ab.ABRouter`: ``path``, ``metadata``, ``threshold`` and
    ``builder`` are the re-ranking model's (so the logged ``model_id`` is its artifact).

    Parameters
    ----------
    model : Model
        Orders the candidates (its probabilities are the ones returned).
    retrieval : Model or ModelHandle
        Chooses the candidates: its top ``top_m`` at threshold 0.
    top_m : int >= 1
        Number of candidates.
    """

    def __init__(self, model: Any, retrieval: Any, top_m: int = 10):
        if isinstance(top_m, bool) or not isinstance(top_m, int) or top_m < 1:
            raise ValueError(f"top_m must be a positive integer, got {top_m!r:.40}")
        for name, m in (("model", model), ("retrieval", retrieval)):
            if not hasattr(m, "recommend"):
                raise TypeError(f"{name} must be a Model or ModelHandle, got {type(m).__name__}")
        self.model = model
        self.retrieval = retrieval
        self.top_m = top_m

    @property
    def path(self) -> Any:
        """The re-ranking model's artifact directory (what the logged ``model_id`` names)."""
        return self.model.path

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The re-ranking model's ``metadata.json``."""
        return self.model.metadata

    @property
    def threshold(self) -> float:
        """The re-ranking model's threshold (the default of :meth:`recommend`)."""
        return float(self.model.threshold)

    @property
    def builder(self) -> Any:
        """The re-ranking model's feature builder (its catalog and vocabulary)."""
        return self.model.builder

    def recommend(
        self,
        session: Mapping[str, Any],
        k: int = 3,
        threshold: float | None = None,
        candidates: Sequence[str] | None = None,
        exclude: Iterable[str] = EXCLUDABLE,
    ) -> list[Recommendation]:
        """At most ``k`` of the retrieval model's top ``top_m``, ordered by the re-ranker.

        ``session``, ``candidates`` and ``exclude`` go to the retrieval model (at threshold
        0); its top ``top_m`` are then scored by the re-ranking model, which returns those
        at or above ``threshold`` (default: its own), best first, as a list of Recommendation.
        """
        top = self.retrieval.recommend(session, self.top_m, 0.0, candidates, exclude)
        if not top:
            return []
        ids = [r.product_id for r in top]
        return self.model.recommend(session, k, threshold, ids, exclude)

    def __repr__(self) -> str:
        return f"Reranker({self.model!r}, retrieval={self.retrieval!r}, top_m={self.top_m})"
