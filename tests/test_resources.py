"""Resources and concurrency: loads from many threads, bounded error messages, and the
example service's limits on what it reads and echoes (issue 11, case 8)."""

from __future__ import annotations

import sysconfig
import threading
import time
from typing import Any

import numpy as np
import pytest

import reco_fast
import reco_fast.artifact as artifact
from reco_fast import InputError
from reco_fast.features.page import Vocabulary

HUGE = "x" * 1_000_000


def test_concurrent_loads_agree_on_the_platform(built, monkeypatch):
    """sysconfig.get_config_var is not thread-safe on first use: a thread that asks while
    another initialises it got None, so some of eight threads loading one artifact at
    once were refused as 'built for another platform'. The tag is computed once, locked."""
    real = sysconfig.get_config_var
    lock = threading.Lock()
    busy = [False]

    def first_use(name: str) -> Any:  # what a concurrent caller saw on first use
        with lock:
            if busy[0]:
                return None
            busy[0] = True
        time.sleep(0.05)
        with lock:
            busy[0] = False
        return real(name)

    monkeypatch.setattr(sysconfig, "get_config_var", first_use)
    monkeypatch.setattr(artifact, "_PLATFORM", None, raising=False)  # a fresh process
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    loaded: list[reco_fast.Model] = []

    def load() -> None:
        barrier.wait()
        try:
            loaded.append(reco_fast.load(built.path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(loaded) == 8


# ---- messages that echo input are bounded ---------------------------------------------------
def test_shown_bounds_any_value():
    from reco_fast.errors import shown, shown_values

    assert len(shown(HUGE)) <= 80
    assert shown("PROD0042") == "'PROD0042'"
    assert shown(0.7) == "0.7"
    assert len(shown(list(range(10**6)))) <= 80
    assert len(shown({HUGE: HUGE})) <= 80
    assert shown_values(["a", "b"]) == "['a', 'b']"
    long = shown_values([f"Category{i:03d}" for i in range(366)])
    assert long.endswith("... and 358 more]") and len(long) < 200


def test_unknown_category_does_not_list_a_whole_vocabulary():
    """An unknown category listed all 366 learned categories in the message."""
    cats = tuple(sorted(f"Category{i:03d}" for i in range(366)))
    vocab = Vocabulary(cats, ("Desktop",), ("Direct",))
    with pytest.raises(InputError, match="and 358 more") as info:
        vocab.code("current_category", "Garden")
    assert len(str(info.value)) < 300
    with pytest.raises(InputError, match="and 358 more") as info:
        vocab.codes("current_category", np.asarray(["Garden", cats[0]]))
    assert len(str(info.value)) < 300


def test_model_errors_echo_bounded_inputs(built, sample_session):
    model = built.model
    cases = [
        lambda: model.predict_proba({**sample_session, "current_category": HUGE}),
        lambda: model.predict_proba({**sample_session, "recommended_product_id": HUGE}),
        lambda: model.predict_proba([sample_session, {**sample_session, "device_type": HUGE}]),
        lambda: model.recommend(sample_session, candidates=[HUGE]),
        lambda: model.recommend(sample_session, k=HUGE),
        lambda: model.recommend(sample_session, threshold=HUGE),
        lambda: model.recommend(sample_session, exclude=[HUGE]),
    ]
    for case in cases:
        with pytest.raises(InputError) as info:
            case()
        assert len(str(info.value)) < 400, str(info.value)[:400]
