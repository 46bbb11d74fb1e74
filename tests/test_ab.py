"""A/B: the stable hash split (ABRouter) and the per-variant report (reco_fast/serve/ab.py)."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import subprocess
import sys

import pytest

from reco_fast.serve.ab import ABRouter, ab_report, bucket, format_ab_report, wilson_interval
from reco_fast.serve.impressions import ImpressionLog, JsonlSink, read_log
from reco_fast.serve.policies import SoftmaxSampling
from tests.helpers import Built, session_from_row, subprocess_env

IDS = [f"session-{i}" for i in range(2000)]


def test_bucket_is_sha256_of_the_session_id():
    for sid in ("s1", "session-42", "ünïcode", "x" * 300):
        digest = hashlib.sha256(sid.encode("utf-8")).digest()
        assert bucket(sid) == int.from_bytes(digest[:8], "big") / 2**64
        salted = hashlib.sha256(("exp2:" + sid).encode("utf-8")).digest()
        assert bucket(sid, "exp2:") == int.from_bytes(salted[:8], "big") / 2**64


class Stub:
    """Just enough of a model for routing: assignment never touches it."""

    path = "."
    threshold = 0.7

    def __init__(self):
        self.metadata = {}

    def recommend(self, *a, **k):
        return []


def _router(log, split=None, salt=""):
    return ABRouter(
        {n: Stub() for n in ("initial", "retrained", "third")}, split, log=log, salt=salt
    )


def test_assignment_is_stable_across_processes_and_hash_seeds(tmp_path):
    """Python's hash() changes per process (PYTHONHASHSEED); the split must not."""
    log = ImpressionLog(JsonlSink(tmp_path))
    split = {"initial": 0.5, "retrained": 0.3, "third": 0.2}
    here = [_router(log, split).assign(s) for s in IDS]
    code = (
        "import json, sys\n"
        "from reco_fast.serve.ab import ABRouter\n"
        "from reco_fast.serve.impressions import ImpressionLog\n"
        + inspect.getsource(Stub)
        + f"r = ABRouter({{n: Stub() for n in {list(split)!r}}}, {split!r}, "
        "log=ImpressionLog(sys.argv[1]))\n"
        f"print(json.dumps([r.assign(s) for s in {IDS!r}]))\n"
    )
    for seed in ("1", "2", "random"):
        env = subprocess_env()
        env["PYTHONHASHSEED"] = seed
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / seed)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == here
    log.close()


def test_split_shares_and_salts(tmp_path):
    log = ImpressionLog(JsonlSink(tmp_path))
    router = _router(log, {"initial": 0.5, "retrained": 0.3, "third": 0.2})
    names = [router.assign(s) for s in IDS]
    n = len(IDS)
    for name, share in router.split.items():
        got = names.count(name) / n
        assert abs(got - share) <= 4 * math.sqrt(share * (1 - share) / n), (name, got)
    # each bucket range maps to its variant, in the order given
    for s, name in zip(IDS, names, strict=True):
        b = bucket(s)
        assert name == ("initial" if b < 0.5 else "retrained" if b < 0.8 else "third")
    # another salt: an independent split
    other = [_router(log, salt="exp2:").assign(s) for s in IDS]
    assert sum(a == b for a, b in zip(names, other, strict=True)) < 0.6 * n
    # a variant with share 0 never serves
    zero = _router(log, {"initial": 0.0, "retrained": 1.0, "third": 0.0})
    assert {zero.assign(s) for s in IDS} == {"retrained"}
    with pytest.raises(ValueError, match="sum to 1"):
        _router(log, {"initial": 0.5, "retrained": 0.3, "third": 0.3})
    with pytest.raises(ValueError, match="exactly the variants"):
        _router(log, {"initial": 1.0})
    with pytest.raises(ValueError, match="session_id"):
        router.assign("")
    log.close()


def test_router_serves_logs_and_swaps(built: Built, tmp_path):
    log = ImpressionLog(JsonlSink(tmp_path))
    router = ABRouter(
        {"initial": built.path, "retrained": built.model},
        log=log,
        policy={"retrained": SoftmaxSampling(1.0, 6, seed=1)},
    )
    sessions = []
    for i, (_, row) in enumerate(built.log.head(60).iterrows()):
        s = session_from_row(row)
        s["session_id"] = f"ab-{i}"
        sessions.append(s)
    for s in sessions:
        for _ in range(2):  # a session keeps its variant
            shown = router.recommend(s, 3, 0.0)
            assert shown.variant == router.assign(s["session_id"])
            router.click(s["session_id"], shown[0].product_id)
    with pytest.raises(KeyError, match="unknown variant"):
        router.swap("nope", built.path)
    log.close()
    records = read_log(tmp_path).records
    imps = [r for r in records if r["type"] == "impression"]
    assert len(imps) == 120
    for r in imps:
        assert r["variant"] == router.assign(r["session_id"])
        assert r["policy"]["name"] == ("softmax" if r["variant"] == "retrained" else "greedy")
    report = ab_report(tmp_path)
    total = report["variants"]["initial"]["requests"] + report["variants"]["retrained"]["requests"]
    assert total == 120
    assert sum(v["clicks"] for v in report["variants"].values()) == 120


def _record(rid, variant, shown, ts=0.0, sid=None):
    return {
        "type": "impression",
        "request_id": rid,
        "session_id": sid or rid,
        "ts": ts,
        "variant": variant,
        "model_id": "m-" + variant,
        "shown": [{"product_id": p, "position": i, "propensity": 1.0} for i, p in enumerate(shown)],
    }


def test_report_counts_ctr_wilson_and_coverage(tmp_path):
    sink = JsonlSink(tmp_path)
    records = [
        _record("r1", "a", ["p1", "p2", "p3"]),
        _record("r2", "a", []),  # nothing above the threshold
        _record("r3", "a", ["p1"]),
        _record("r4", "b", ["p1", "p2"]),
        {"type": "click", "request_id": "r1", "session_id": "r1", "product_id": "p2", "ts": 1.0},
        {"type": "click", "request_id": "r1", "session_id": "r1", "product_id": "p2", "ts": 2.0},
        {"type": "purchase", "request_id": "r1", "session_id": "r1", "product_id": "p2", "ts": 3},
        {"type": "click", "request_id": "r4", "session_id": "r4", "product_id": "p1", "ts": 1.0},
        {"type": "click", "request_id": "r4", "session_id": "r4", "product_id": "p2", "ts": 1.0},
        {"type": "click", "request_id": None, "session_id": "r3", "product_id": "p1", "ts": 5.0},
        {"type": "click", "request_id": None, "session_id": "zz", "product_id": "p1", "ts": 5.0},
    ]
    sink.write_batch([json.dumps(r).encode() + b"\n" for r in records])
    sink.close()
    report = ab_report(tmp_path)
    a, b = report["variants"]["a"], report["variants"]["b"]
    # a: 3 requests, 4 shown, 2 clicked (p2 of r1 once, p1 of r3 joined offline)
    assert (a["requests"], a["impressions"], a["clicks"]) == (3, 4, 2)
    assert a["ctr"] == 0.5 and a["coverage"] == pytest.approx(2 / 3)
    assert a["ctr_ci"] == pytest.approx(list(wilson_interval(2, 4)))
    assert (b["requests"], b["impressions"], b["clicks"], b["ctr"]) == (1, 2, 2, 1.0)
    assert a["model_ids"] == ["m-a"]
    assert report["log"]["joined_offline"] == 1 and report["log"]["unmatched"] == 1
    table = format_ab_report(report)
    assert "| a | 3 | 4 | 2 | 0.5000 |" in table


def test_wilson_interval_known_values():
    """Values from Newcombe (1998), Table I (95% Wilson score intervals)."""
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
