"""Live sessions for event-trained models: views, cart, purchases -> the products a session touched.

A model built with ``--events`` (:mod:`reco_fast.features.events`) reads a session as
the products it touched, most recent last, and its cart. :class:`EventTracker`
keeps exactly that per session, in the same stores as :class:`SessionTracker`
(in memory, or Redis for several replicas), with the same guarantees: every
event is one atomic update, a rejected event changes nothing, events must arrive
in order, a session idle longer than the TTL is gone.

Policies:

- A session may start with any event (a view, a cart addition, a purchase).
- ``view``, ``add_to_cart`` and ``purchase`` touch the product (as in training);
  ``add_to_cart`` also puts it in the cart, ``remove_from_cart`` takes it out.
- Product ids of any type are string ids (``1004767`` and ``"1004767"`` are one
  product); products the model does not know are accepted (shops add products
  daily) and ranked by the model's unknown-product rule.
- The last ``MAX_PRODUCTS`` touched products are kept.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reco_fast._docstrings import inject
from reco_fast.errors import InputError, SessionNotFound
from reco_fast.serve.recommend import Recommendation
from reco_fast.serve.session import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_TTL_SECONDS,
    MemoryStore,
    SessionStore,
    State,
    _attach,
    _log_of,
    new_event_state,
)

if TYPE_CHECKING:
    from reco_fast.serve.impressions import ImpressionLog, LoggedRecommender
    from reco_fast.serve.model import Model
    from reco_fast.serve.policies import Policy

__all__ = ["MAX_PRODUCTS", "EventTracker"]

MAX_PRODUCTS = 100


def _id(name: str, value: Any) -> str:
    """An id as a string id: str as is, integers (not bool) in decimal; else InputError."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(
            f"{name!r} must be a string or integer id, got {type(value).__name__}", field=name
        )
    text = str(value)
    if not text or len(text) > 256:
        raise InputError(f"{name!r} must be 1 to 256 characters long", field=name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{name!r} must be valid Unicode text (a lone surrogate)", field=name
        ) from None
    return text


# The event methods' shared docstring sections (reco_fast._docstrings.inject).
_EVENT_DOC: dict[str, str] = {
    "ids": """
        session_id : str or int
            The session's id (an integer is its decimal string); 1 to 256 characters.
        product_id : str or int
            The product's id, as for ``session_id``; products the model does not know
            are accepted.
    """,
    "ts": """
        ts : float, optional
            The event's time in epoch seconds (>= 0); default: the clock's time, never
            before the session's last event. A session idle for more than ``ttl``
            seconds at ``ts`` starts again.
    """,
    "outcome": """
        Returns
        -------
        dict
            The session after the event: ``{"products": [ids, most recent last],
            "cart": [ids]}``.

        Raises
        ------
        InputError
            A bad id or ``ts``, or ``ts`` older than the session's last event.
        StoreUnavailable
            The session store cannot be reached (a :class:`~reco_fast.RedisStore`).
    """,
}
_EVENT_DOC["event"] = "\n".join(
    ["Parameters", "----------"]
    + [textwrap.dedent(_EVENT_DOC[part]).strip("\n") for part in ("ids", "ts")]
    + ["", textwrap.dedent(_EVENT_DOC["outcome"]).strip("\n")]
)


class EventTracker:
    """Turns a stream of shop events into the session an event-trained model ranks.

    Parameters
    ----------
    model : Model
        An event-trained model (``reco-fast build --events``).
    store : SessionStore, optional
        Where sessions live (default: a :class:`~reco_fast.MemoryStore` with ``ttl``
        and ``max_sessions``); a :class:`~reco_fast.RedisStore` for several replicas.
    ttl : float
        Seconds a session may stay idle (default 1,800); used only without ``store``.
    max_sessions : int
        Bound of the in-memory store (default 100,000); used only without ``store``.
    clock : callable
        Epoch seconds now (default ``time.time``).
    log : ImpressionLog, optional
        Attach an impression log: ``recommend`` logs one impression per call (and
        returns a ``Shown`` list with its ``request_id``), :meth:`click` records a
        click and :meth:`purchase` a purchase too, each joined by the log to the
        impression that showed the product (as :class:`~reco_fast.SessionTracker`).
    policy : Policy, optional
        With ``log``: an exploration policy (:mod:`reco_fast.serve.policies`).

    Raises
    ------
    ValueError
        ``model`` was not trained on events; ``policy`` without ``log``.
    """

    def __init__(
        self,
        model: Model,
        store: SessionStore | None = None,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
        log: ImpressionLog | None = None,
        policy: Policy | None = None,
    ):
        if not model.ranks_from_events:
            raise ValueError(
                "EventTracker serves event-trained models (reco-fast build --events); "
                "use SessionTracker for models in the seed's page-view schema"
            )
        self._model = model
        self._clock = clock
        self.store: SessionStore = (
            store if store is not None else MemoryStore(ttl, max_sessions, clock)
        )
        self.ttl = self.store.ttl
        self._logged: LoggedRecommender | None = _attach(self, log, policy)

    @property
    def log(self) -> ImpressionLog | None:
        """The attached impression log, or None."""
        return None if self._logged is None else self._logged.log

    def _event(self, kind: str, session_id: Any, product_id: Any, ts: float | None) -> State:
        sid = _id("session_id", session_id)
        pid = _id("product_id", product_id)
        if ts is not None and (
            isinstance(ts, bool)
            or not isinstance(ts, (int, float))
            or not math.isfinite(ts)
            or ts < 0
        ):
            raise InputError(f"'ts' must be epoch seconds >= 0, got {str(ts)[:40]}", field="ts")

        def apply(state: State | None) -> State:
            now = float(ts) if ts is not None else self._clock()
            if state is not None and now - state["last_ts"] > self.ttl:
                state = None  # idle past the TTL: a new session
            if state is None:
                state = new_event_state(sid, now)
            elif ts is None:
                now = max(now, state["last_ts"])
            elif now < state["last_ts"]:
                raise InputError(
                    f"event at ts={now!r} is older than the session's last event "
                    f"(ts={state['last_ts']!r}); events must arrive in order",
                    field="ts",
                )
            products, cart = list(state["products"]), list(state["cart"])
            if kind in ("view", "cart", "purchase"):
                products = [*products, pid][-MAX_PRODUCTS:]
            if kind == "cart" and pid not in cart:
                cart.append(pid)
            elif kind == "remove" and pid in cart:
                cart.remove(pid)
            return {**state, "last_ts": now, "products": products, "cart": cart}

        return self.store.update(sid, apply)

    @inject(_EVENT_DOC)
    def view(self, session_id: Any, product_id: Any, *, ts: float | None = None) -> dict[str, Any]:
        """A product page view: touches the product.

        %(event)s
        """
        return self._context(self._event("view", session_id, product_id, ts))

    @inject(_EVENT_DOC)
    def add_to_cart(
        self, session_id: Any, product_id: Any, *, ts: float | None = None
    ) -> dict[str, Any]:
        """A cart addition: touches the product and puts it in the cart (once).

        %(event)s
        """
        return self._context(self._event("cart", session_id, product_id, ts))

    @inject(_EVENT_DOC)
    def purchase(
        self, session_id: Any, product_id: Any, *, ts: float | None = None
    ) -> dict[str, Any]:
        """A purchase: touches the product (the cart is unchanged); with a log attached,
        also records the purchase there, joined to the impression that showed the product.

        Parameters
        ----------
        %(ids)s
        ts : float, optional
            The event's time in epoch seconds (>= 0); default: the clock's time, never
            before the session's last event. A session idle for more than ``ttl``
            seconds at ``ts`` starts again. With a log, the purchase's time there
            (default: now, ``time.time``).

        %(outcome)s
        """
        context = self._context(self._event("purchase", session_id, product_id, ts))
        if self._logged is not None:
            self._logged.log.purchase(
                _id("session_id", session_id), _id("product_id", product_id), ts
            )
        return context

    def click(self, session_id: Any, product_id: Any, *, ts: float | None = None) -> None:
        """Record a click on the recommended ``product_id`` in ``session_id`` at ``ts``
        (epoch seconds, default now) in the attached log, joined to the impression that
        showed it (see :meth:`reco_fast.SessionTracker.click`). The session is not
        changed: a click that opens the product is a :meth:`view` too.

        Raises
        ------
        RuntimeError
            No impression log is attached.
        InputError
            An empty or non-text id; TypeError/ValueError: a bad ``ts``.
        """
        _log_of(self, "click").click(
            _id("session_id", session_id), _id("product_id", product_id), ts
        )

    @inject(_EVENT_DOC)
    def remove_from_cart(
        self, session_id: Any, product_id: Any, *, ts: float | None = None
    ) -> dict[str, Any]:
        """Takes the product out of the cart (a no-op if it is not there).

        %(event)s
        """
        return self._context(self._event("remove", session_id, product_id, ts))

    @staticmethod
    def _context(state: State) -> dict[str, Any]:
        return {"products": list(state["products"]), "cart": list(state["cart"])}

    def context(self, session_id: Any) -> dict[str, Any]:
        """``{"products": [...], "cart": [...]}`` of a live session.

        Parameters
        ----------
        session_id : str or int
            The session's id.

        Returns
        -------
        dict
            ``products``: the ids the session touched, most recent last (at most
            :data:`MAX_PRODUCTS`); ``cart``: the ids in its cart.

        Raises
        ------
        SessionNotFound
            Unknown, expired, or its last event touched no product.
        InputError
            A bad ``session_id``.
        """
        sid = _id("session_id", session_id)
        state = self.store.get(sid)
        if state is None or self._clock() - state["last_ts"] > self.ttl:
            raise SessionNotFound(f"session {sid[:60]!r} is unknown or expired", field="session_id")
        if not state["products"]:
            raise SessionNotFound(
                f"session {sid[:60]!r} has touched no product yet (only cart removals)",
                field="session_id",
            )
        return self._context(state)

    def recommend(self, session_id: Any, k: int = 10, **kwargs: Any) -> list[Recommendation]:
        """The model's top ``k`` for the session as it is now: ``Model.recommend`` of
        :meth:`context` (``kwargs`` are passed on).

        With a ``log`` attached the call is logged as one impression (``ts=`` sets its
        time) and returns a :class:`~reco_fast.serve.impressions.Shown`.

        Parameters
        ----------
        session_id : str or int
            The session's id.
        k : int
            How many products at most.

        Returns
        -------
        list of Recommendation
            Best first.

        Raises
        ------
        SessionNotFound
            The session is unknown, expired or has touched no product.
        """
        logged = self._logged
        if logged is not None:
            return logged.recommend(_id("session_id", session_id), k, **kwargs)
        return self._model.recommend(self.context(session_id), k, **kwargs)
