"""The impression log (reco_fast/serve/impressions.py): records, the click join, the queue that never
blocks the request path, crash safety of the JSONL files, fsync and rotation, the Redis Stream."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reco_fast
from reco_fast import InputError, ModelHandle, SessionTracker
from reco_fast.serve.impressions import (
    ImpressionLog,
    JsonlSink,
    LoggedRecommender,
    RedisStreamSink,
    artifact_id,
    load_joined,
    read_log,
    read_stream,
)
from reco_fast.serve.policies import EpsilonGreedy, SoftmaxSampling
from tests.helpers import Built, session_from_row, subprocess_env


@pytest.fixture(scope="module")
def model(built: Built) -> reco_fast.Model:
    return built.model


@pytest.fixture(scope="module")
def sessions(built: Built) -> list[dict[str, Any]]:
    """300 page views of the generated log as session dicts (recommended product removed)."""
    out = []
    for i, (_, row) in enumerate(built.log.head(300).iterrows()):
        s = session_from_row(row)
        s.pop("recommended_product_id")
        s["session_id"] = f"sess-{i}"
        out.append(s)
    return out


def _impressions(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "impression"]


def test_an_impression_record_holds_what_was_scored_and_shown(model, sessions, tmp_path):
    log = ImpressionLog(tmp_path / "log")
    rec = LoggedRecommender(model, log, variant="control")
    session = dict(sessions[0], time_on_page_sec=75.12345678901234, scroll_depth=0.1 + 0.2)
    session["cart_product_ids"] = [model.builder.catalog.product_ids[5]]
    before = time.time()
    shown = rec.recommend(session, 3, 0.0)
    after = time.time()
    original = json.loads(json.dumps(session))
    session["time_on_page_sec"] = 1.0  # the caller's later changes do not reach the log
    session["cart_product_ids"].append("PROD0001")
    log.close()
    (record,) = read_log(tmp_path / "log").records

    assert record["type"] == "impression"
    assert uuid.UUID(hex=record["request_id"]).version == 4
    assert record["request_id"] == shown.request_id
    assert record["session_id"] == "sess-0"
    assert before <= record["ts"] <= after
    metadata = (Path(model.path) / "metadata.json").read_bytes()
    assert record["model_id"] == hashlib.sha256(metadata).hexdigest() == shown.model_id
    assert (record["variant"], record["k"], record["threshold"]) == ("control", 3, 0.0)
    assert record["policy"] == {"name": "greedy"}
    assert record["session"] == original  # every field, floats to the last bit
    assert [s["product_id"] for s in record["shown"]] == [r.product_id for r in shown]
    assert [s["position"] for s in record["shown"]] == [0, 1, 2]
    assert [s["propensity"] for s in record["shown"]] == [1.0, 1.0, 1.0]
    for s in record["shown"]:
        # the logged fields rebuild the scored row: same probability as scoring it now
        p = model.predict_proba({**record["session"], "recommended_product_id": s["product_id"]})
        assert abs(p - s["probability"]) <= 1e-12
    assert "candidates" not in record


def test_session_ids_through_a_tracker(model, tmp_path):
    tracker = SessionTracker(model)
    ids = model.builder.catalog.product_ids.tolist()
    tracker.page_view("t1", ids[3], device_type="Desktop", traffic_source="Email")
    tracker.engagement("t1", time_on_page_sec=80, scroll_depth=0.9)
    log = ImpressionLog(tmp_path)
    rec = LoggedRecommender(tracker, log)
    shown = rec.recommend("t1", 3, 0.0)
    context = tracker.context("t1")
    log.close()
    (record,) = read_log(tmp_path).records
    assert record["session_id"] == "t1" and record["session"] == context
    assert [s["product_id"] for s in record["shown"]] == [r.product_id for r in shown]
    with pytest.raises(reco_fast.SessionNotFound):
        rec.recommend("nobody")
    with pytest.raises(TypeError, match="session id needs"):
        LoggedRecommender(model, log).recommend("t1")


def test_exploring_records_log_candidates_and_exact_propensities(model, sessions, tmp_path):
    log = ImpressionLog(tmp_path)
    policy = SoftmaxSampling(0.8, 10, seed=4)
    rec = LoggedRecommender(model, log, policy)
    for s in sessions[:20]:
        rec.recommend(s, 3, 0.0)
    log.close()
    for record in read_log(tmp_path).records:
        assert record["policy"] == policy.to_json()
        cands = record["candidates"]
        assert len(cands) == 10
        matrix = policy.matrix([c[1] for c in cands], 3)
        ids = [c[0] for c in cands]
        for s in record["shown"]:
            assert s["propensity"] == matrix[ids.index(s["product_id"])][s["position"]] > 0


def test_every_click_of_a_shown_product_is_joined(model, sessions, tmp_path):
    """Clicks (and purchases) of shown products, in sessions with several requests, join the
    latest impression that showed the product; clicks of anything else are counted unmatched."""
    log = ImpressionLog(tmp_path)
    recs = [
        LoggedRecommender(model, log, EpsilonGreedy(0.5, 8, seed=1), variant="a"),
        LoggedRecommender(model, log, None, variant="b"),
    ]
    rng = random.Random(3)
    t0 = 1_000_000.0
    latest: dict[tuple[str, str], tuple[str, int]] = {}
    expected: list[tuple[str, str, str, int]] = []  # kind, session, product, request
    not_shown = 0
    catalog = model.builder.catalog.product_ids.tolist()
    for i, s in enumerate(sessions[:120]):
        sid = s["session_id"]
        for j in range(rng.randint(1, 3)):  # several requests per session
            ts = t0 + i * 10 + j
            shown = recs[i % 2].recommend(s, 3, 0.0, ts=ts)
            for pos, r in enumerate(shown):
                latest[(sid, r.product_id)] = (shown.request_id, pos)
        for (s2, pid), (rid, _) in list(latest.items()):
            if s2 == sid:
                kind = "click" if rng.random() < 0.8 else "purchase"
                getattr(log, kind)(sid, pid, ts=t0 + i * 10 + 5)
                expected.append((kind, sid, pid, rid))
        miss = next(p for p in catalog if (sid, p) not in latest)
        log.click(sid, miss, ts=t0 + i * 10 + 5)
        not_shown += 1
    log.close()
    records = read_log(tmp_path).records
    outcomes = [r for r in records if r["type"] in ("click", "purchase")]
    matched = [r for r in outcomes if r["request_id"] is not None]
    got = [(r["type"], r["session_id"], r["product_id"], r["request_id"]) for r in matched]
    assert got == expected
    impressions = {r["request_id"]: r for r in _impressions(records)}
    for r in matched:
        imp = impressions[r["request_id"]]
        assert imp["shown"][r["position"]]["product_id"] == r["product_id"]
        assert (r["variant"], r["model_id"], r["impression_ts"]) == (
            imp["variant"],
            imp["model_id"],
            imp["ts"],
        )
    stats = log.stats()
    clicks = sum(1 for e in expected if e[0] == "click")
    assert stats["clicks"] == clicks + not_shown and stats["unmatched_clicks"] == not_shown
    assert stats["purchases"] == len(expected) - clicks and stats["unmatched_purchases"] == 0
    assert stats["written"] == len(records) and stats["dropped"] == 0


def test_the_join_window_and_its_bounds(model, sessions, tmp_path):
    """A click joins an impression at most click_window seconds older; the join state keeps
    join_per_session impressions of join_sessions sessions. What it forgot, load_joined
    joins offline (same window) from the whole log."""
    log = ImpressionLog(tmp_path, click_window=60.0, join_per_session=2, join_sessions=3)
    rec = LoggedRecommender(model, log)
    s = sessions[0]
    sid = s["session_id"]
    viewed = set(model.builder.viewed_ids(s))
    free = [p for p in model.builder.catalog.product_ids.tolist() if p not in viewed]
    groups = [free[0:3], free[3:6], free[6:9]]
    imps = [rec.recommend(s, 3, 0.0, candidates=g, ts=100.0 + 10 * i) for i, g in enumerate(groups)]
    assert [sorted(r.product_id for r in shown) for shown in imps] == [sorted(g) for g in groups]
    a = groups[2][0]  # shown by the latest impression, at ts=120
    log.click(sid, a, ts=119.0)  # before it: not joined (no other impression showed it)
    log.click(sid, a, ts=181.0)  # after the window
    log.click(sid, a, ts=179.0)  # inside: joined
    log.click(sid, groups[0][0], ts=125.0)  # only the 1st impression showed it: forgotten
    for other in sessions[1:4]:  # three newer sessions evict this one (join_sessions=3)
        rec.recommend(other, 3, 0.0, ts=130.0)
    log.click(sid, groups[1][0], ts=131.0)  # shown by the 2nd impression, evicted with the session
    log.close()
    clicks = [r for r in read_log(tmp_path).records if r["type"] == "click"]
    rid = [shown.request_id for shown in imps]
    assert [c["request_id"] for c in clicks] == [None, None, rid[2], None, None]
    assert log.stats()["unmatched_clicks"] == 4
    impressions, counts = load_joined(tmp_path, window=60.0)
    by_id = {i.request_id: i for i in impressions}
    assert counts["joined_offline"] == 2 and counts["unmatched"] == 2
    assert by_id[rid[0]].clicked == {groups[0][0]}
    assert by_id[rid[1]].clicked == {groups[1][0]}
    assert by_id[rid[2]].clicked == {a}


def test_a_full_queue_drops_and_counts(model, sessions, tmp_path):
    log = ImpressionLog(tmp_path, maxsize=5, batch_interval=60.0)  # the writer sleeps
    rec = LoggedRecommender(model, log)
    for s in sessions[:50]:
        assert len(rec.recommend(s, 3, 0.0)) == 3  # served either way
    log.click("sess-0", "PROD0001")
    assert log.stats()["dropped"] == 46 and log.stats()["queued"] == 5
    log.close()
    stats = log.stats()
    assert (stats["written"], stats["dropped"], stats["queued"]) == (5, 46, 0)
    assert len(read_log(tmp_path).records) == 5
    rec.recommend(sessions[0], 3, 0.0)  # after close: still served, dropped
    assert log.stats()["dropped"] == 47


class _StuckSink:
    """A sink whose writes block until released (a hung disk or network)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[bytes] = []

    def write_batch(self, lines):
        self.release.wait()
        self.lines.extend(lines)
        return len(lines), 0

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_request_path_never_waits_on_the_sink(model, sessions):
    sink = _StuckSink()
    log = ImpressionLog(sink, maxsize=100, batch_interval=0.001)
    rec = LoggedRecommender(model, log)
    rec.recommend(sessions[0], 3, 0.0)
    time.sleep(0.05)  # the writer is now stuck in write_batch
    slowest = 0.0
    for s in sessions[:300]:
        t = time.perf_counter()
        rec.recommend(s, 3, 0.0)
        slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.25, slowest  # no call waited for the stuck sink
    assert log.stats()["dropped"] >= 300 - 100
    sink.release.set()
    log.close()
    assert log.stats()["written"] == len(sink.lines) == 301 - log.stats()["dropped"]


def test_a_failing_sink_is_counted_and_serving_goes_on(model, sessions):
    class Broken(_StuckSink):
        def write_batch(self, lines):
            raise OSError("disk on fire")

    log = ImpressionLog(Broken(), batch_interval=0.001)
    rec = LoggedRecommender(model, log)
    for s in sessions[:10]:
        rec.recommend(s, 3, 0.0)
    log.close()
    assert log.stats()["failed"] == 10 and log.stats()["written"] == 0


# ---- files: crash safety, torn lines, rotation, fsync ------------------------------------
CHILD = r"""
import json, sys
import reco_fast
from reco_fast.serve.impressions import ImpressionLog, JsonlSink, LoggedRecommender
from reco_fast.serve.policies import SoftmaxSampling

model = reco_fast.load(sys.argv[1])
sink = JsonlSink(sys.argv[2], max_bytes=int(sys.argv[3]), fsync_every=0, fsync_interval=None)
log = ImpressionLog(sink, maxsize=100_000, batch_interval=0.001)
rec = LoggedRecommender(model, log, SoftmaxSampling(1.0, 10, seed=int(sys.argv[4])))
session = json.loads(sys.argv[5])
i = 0
while True:
    i += 1
    sid = f"c{sys.argv[4]}-{i}"
    # notes of up to 12 KB: records span several pages, so a kill can land mid-write
    rec.recommend(dict(session, session_id=sid, note="x" * (i * 997 % 12_000)), 3, 0.0)
    rec.click(sid, "PROD0001")
    if i == 300:
        log.flush()
        print("ready", flush=True)
"""


def test_a_killed_writer_leaves_whole_records_only(built, sessions, tmp_path):
    """SIGKILL a process while it logs (several times, into one directory): every line the
    reader returns is a whole record, a cut record can only be a file's last line (skipped and
    counted), and later processes write on in files of their own."""
    log_dir = tmp_path / "log"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(5)
    kills = 4
    for run in range(kills):
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(built.path),
                str(log_dir),
                "200000",
                str(run),
                json.dumps(sessions[run]),
            ],
            stdout=subprocess.PIPE,
            env=subprocess_env(),
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
    read = read_log(log_dir)  # raises on any damaged line that is not a file's last
    assert read.torn <= read.files
    print(f"{read.files} files, {read.torn} torn last lines, {len(read.records)} records")
    impressions = _impressions(read.records)
    assert len(impressions) >= kills * 300
    for r in impressions:
        i = int(r["session_id"].split("-")[1])
        assert r["session"]["note"] == "x" * (i * 997 % 12_000)  # whole, not cut
        assert len(r["shown"]) == 3
    for path in log_dir.glob("*.jsonl"):
        data = path.read_bytes()
        cut = data.rsplit(b"\n", 1)[-1]
        if cut:  # a torn last line is a prefix of a record, never followed by another
            with pytest.raises(ValueError):
                json.loads(cut)
    # a torn tail is skipped; a damaged line that is not the last is refused
    path = next(p for p in sorted(log_dir.glob("*.jsonl")) if p.read_bytes().endswith(b"\n"))
    with path.open("ab") as f:
        f.write(b'{"type": "impression", "request_')
    again = read_log(log_dir)
    assert (again.torn, again.records) == (read.torn + 1, read.records)
    with path.open("ab") as f:
        f.write(b"\n{}\n")
    with pytest.raises(InputError, match=rf"{path.name}: line \d+ is not a JSON record"):
        read_log(log_dir)


def test_torn_last_line_is_skipped_and_counted(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.write_batch([b'{"type":"click","n":1}\n', b'{"type":"click","n":2}\n'])
    sink.close()
    (path,) = tmp_path.glob("*.jsonl")
    path.write_bytes(path.read_bytes() + b'{"type":"cli')
    read = read_log(tmp_path)
    assert [r["n"] for r in read.records] == [1, 2] and read.torn == 1 and read.files == 1
    path.write_bytes(b'{"n":1}\n[1, 2]\n{"n":3}\n')
    with pytest.raises(InputError, match=r"line 2 is not a JSON record"):
        read_log(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_log(tmp_path / "missing")


def test_files_rotate_by_size_and_keep_every_record(tmp_path):
    sink = JsonlSink(tmp_path, max_bytes=1000)
    lines = [
        json.dumps({"type": "click", "n": i, "pad": "y" * (i % 300)}).encode() + b"\n"
        for i in range(200)
    ]
    assert sink.write_batch(lines) == (200, 0)
    sink.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) > 10 and files == sink.files
    assert all(f.stat().st_size <= 1000 for f in files)
    assert [r["n"] for r in read_log(tmp_path).records] == list(range(200))
    big = JsonlSink(tmp_path / "big", max_bytes=10)
    assert big.write_batch([b'{"a": "longer than ten bytes"}\n'] * 2) == (2, 0)
    big.close()
    assert len(big.files) == 2  # a record larger than max_bytes gets a file of its own


def test_fsync_policy(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    line = b'{"type":"click"}\n'
    sink = JsonlSink(tmp_path / "count", fsync_every=3, fsync_interval=None)
    sink.write_batch([line] * 7)
    assert synced == ["dir", "file", "file"]  # the new file's name, then records 3 and 6
    sink.tick()
    assert synced.count("file") == 2  # no timer
    sink.close()
    assert synced.count("file") == 3  # the 7th record, on close
    synced.clear()
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    sink = JsonlSink(tmp_path / "timer", fsync_every=0, fsync_interval=2.0)
    sink.write_batch([line] * 50)
    sink.tick()
    assert synced == ["dir"]
    clock[0] += 2.5
    sink.tick()
    assert synced == ["dir", "file"]
    sink.tick()  # nothing new since
    assert synced == ["dir", "file"]
    sink.close()
    assert synced == ["dir", "file"]


def test_model_ids_follow_a_swapped_handle(built, sessions, tmp_path):
    """The logged model_id is the artifact that scored the request (checked against metadata)."""
    copy = tmp_path / "artifact"
    shutil.copytree(built.path, copy)
    handle = ModelHandle(built.path)
    log = ImpressionLog(tmp_path / "log")
    rec = LoggedRecommender(handle, log)
    rec.recommend(sessions[0], 3, 0.0)
    model = reco_fast.load(copy)
    handle.swap(model)
    rec.recommend(sessions[1], 3, 0.0)
    log.close()
    ids = [r["model_id"] for r in read_log(tmp_path / "log").records]
    assert ids == [artifact_id(built.model), artifact_id(model)]
    (copy / "metadata.json").write_text("{}")
    with pytest.raises(reco_fast.ArtifactError, match="changed since the model was loaded"):
        artifact_id(model)


def test_bad_arguments(model, sessions, tmp_path):
    log = ImpressionLog(tmp_path)
    rec = LoggedRecommender(model, log)
    with pytest.raises(ValueError, match="session_id"):
        rec.recommend({k: v for k, v in sessions[0].items() if k != "session_id"})
    with pytest.raises(InputError, match="k must be"):
        LoggedRecommender(model, log, EpsilonGreedy(0.1)).recommend(sessions[0], -1)
    with pytest.raises(InputError):
        rec.recommend(dict(sessions[0], scroll_depth=2.0))
    with pytest.raises(TypeError, match="product_id"):
        log.click("s", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ts"):
        log.click("s", "p", ts=float("nan"))
    with pytest.raises(ValueError, match="maxsize"):
        ImpressionLog(tmp_path, maxsize=0)
    with pytest.raises(TypeError, match="policy"):
        LoggedRecommender(model, log, policy="softmax")  # type: ignore[arg-type]
    log.close()
    assert read_log(tmp_path).records == []  # nothing logged for refused requests


# ---- Redis Stream ------------------------------------------------------------------------
redis = pytest.importorskip("redis")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """REDIS_URL's server, or a throwaway redis-server on loopback (as tests/test_redis.py)."""
    url = os.environ.get("REDIS_URL")
    proc = None
    if not url:
        server = shutil.which("redis-server")
        if server is None:
            if os.environ.get("CI"):
                pytest.fail("Redis is required under CI")
            pytest.skip("no redis-server")
        port = _free_port()
        proc = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1"),
                *(
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp_path_factory.mktemp("redis")),
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    deadline = time.monotonic() + 5
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                pytest.fail(f"redis at {url} does not answer")
            time.sleep(0.05)
    try:
        yield client
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=5)


def test_redis_stream_sink(model, sessions, redis_client, tmp_path):
    """Two replicas log into one stream; the records come back whole and joined."""
    key = f"reco_fast_test:{uuid.uuid4().hex}"
    logs = [ImpressionLog(RedisStreamSink(redis_client, key, maxlen=100_000)) for _ in range(2)]
    recs = [LoggedRecommender(model, lg, variant=f"replica{i}") for i, lg in enumerate(logs)]
    shown_ids = []
    for i, s in enumerate(sessions[:40]):
        shown = recs[i % 2].recommend(s, 3, 0.0)
        logs[i % 2].click(s["session_id"], shown[1].product_id)
        shown_ids.append(shown.request_id)
    for lg in logs:
        lg.close()
    records = read_stream(redis_client, key, page=7)
    assert sorted(r["request_id"] for r in _impressions(records)) == sorted(shown_ids)
    clicks = [r for r in records if r["type"] == "click"]
    assert len(clicks) == 40 and all(c["request_id"] in shown_ids for c in clicks)
    assert sum(lg.stats()["written"] for lg in logs) == 80
    redis_client.delete(key)


def test_redis_stream_is_capped_and_outages_are_counted(model, sessions, redis_client):
    key = f"reco_fast_test:{uuid.uuid4().hex}"
    log = ImpressionLog(RedisStreamSink(redis_client, key, maxlen=50), batch_interval=0.001)
    for _ in range(10):
        for s in sessions[:100]:
            log.click(s["session_id"], "PROD0001")
        log.flush()
    log.close()
    assert log.stats()["written"] == 1000
    assert 50 <= redis_client.xlen(key) < 1000  # MAXLEN ~ trims whole macro nodes
    redis_client.delete(key)
    down = redis.Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=0.2)
    log = ImpressionLog(RedisStreamSink(down, key), batch_interval=0.001)
    rec = LoggedRecommender(model, log)
    t = time.perf_counter()
    for s in sessions[:20]:
        rec.recommend(s, 3, 0.0)
    assert time.perf_counter() - t < 1.0  # serving does not wait for the dead server
    log.close()
    assert log.stats()["failed"] == 20 and log.stats()["written"] == 0


# ---- the tracker and handle hooks ------------------------------------------------------------
def test_a_tracker_with_a_log_attached_logs_and_joins_outcomes(model, tmp_path):
    """SessionTracker(model, log=...): recommend logs one impression per call, click and purchase
    go to the same log and join it; a click of a product not shown is written unmatched."""
    ids = model.builder.catalog.product_ids.tolist()
    log = ImpressionLog(tmp_path)
    tracker = SessionTracker(model, log=log)
    assert tracker.log is log
    tracker.page_view("t1", ids[3], device_type="Desktop", traffic_source="Email")
    tracker.engagement("t1", time_on_page_sec=80, scroll_depth=0.9)
    shown = tracker.recommend("t1", 3, 0.0, ts=1_700_000_000.0)
    context = tracker.context("t1")
    assert [r.product_id for r in shown] == [r.product_id for r in model.recommend(context, 3, 0.0)]
    assert shown.model_id == artifact_id(model)
    not_shown = next(p for p in ids if p not in {r.product_id for r in shown})
    tracker.click("t1", shown[1].product_id, ts=1_700_000_010.0)
    tracker.purchase("t1", shown[0].product_id, ts=1_700_000_020.0)
    tracker.click("t1", not_shown, ts=1_700_000_030.0)
    log.close()
    imp, click, purchase, stray = read_log(tmp_path).records
    assert imp["type"] == "impression" and imp["request_id"] == shown.request_id
    assert imp["session_id"] == "t1" and imp["session"] == context
    assert (click["type"], click["request_id"], click["position"]) == (
        "click",
        imp["request_id"],
        1,
    )
    assert (purchase["type"], purchase["request_id"], purchase["position"]) == (
        "purchase",
        imp["request_id"],
        0,
    )
    assert stray["request_id"] is None
    assert log.stats()["unmatched_clicks"] == 1 and log.stats()["unmatched_purchases"] == 0


def test_a_tracker_explores_with_a_policy(model, tmp_path):
    ids = model.builder.catalog.product_ids.tolist()
    log = ImpressionLog(tmp_path)
    policy = EpsilonGreedy(0.5, 10, seed=1)
    tracker = SessionTracker(model, log=log, policy=policy)
    tracker.page_view("t", ids[7], device_type="Mobile", traffic_source="Direct")
    for _ in range(5):
        tracker.recommend("t", 3, 0.0)
    log.close()
    records = read_log(tmp_path).records
    assert len(records) == 5 and all(r["policy"] == policy.to_json() for r in records)


def test_clicks_need_an_attached_log(model):
    tracker = SessionTracker(model)
    ids = model.builder.catalog.product_ids.tolist()
    tracker.page_view("t", ids[0], device_type="Desktop", traffic_source="Email")
    assert type(tracker.recommend("t", 3, 0.0)) is list and tracker.log is None
    with pytest.raises(RuntimeError, match="no impression log to record a click"):
        tracker.click("t", ids[1])
    with pytest.raises(RuntimeError, match="no impression log to record a purchase"):
        tracker.purchase("t", ids[1])
    with pytest.raises(ValueError, match="policy goes with log"):
        SessionTracker(model, policy=EpsilonGreedy(0.1, 10))
    with pytest.raises(TypeError, match="log must be an ImpressionLog"):
        SessionTracker(model, log="logs/impressions")  # type: ignore[arg-type]


def test_a_tracker_on_a_handle_logs_the_model_that_scored(built, tmp_path):
    """SessionTracker(handle, log=...) logs the handle's current model_id, before and after a
    swap; ModelHandle.model_id is the sha256 of the serving artifact's metadata.json."""
    copy = tmp_path / "artifact"
    shutil.copytree(built.path, copy)
    (copy / "metadata.json").write_text(
        json.dumps(json.loads((copy / "metadata.json").read_text()), indent=1)
    )  # same metadata, other bytes: another id
    handle = ModelHandle(built.path)
    first = hashlib.sha256((built.path / "metadata.json").read_bytes()).hexdigest()
    second = hashlib.sha256((copy / "metadata.json").read_bytes()).hexdigest()
    assert first != second and handle.model_id == first
    log = ImpressionLog(tmp_path / "log")
    tracker = SessionTracker(handle, log=log)
    ids = built.model.builder.catalog.product_ids.tolist()
    tracker.page_view("h", ids[2], device_type="Tablet", traffic_source="Direct")
    a = tracker.recommend("h", 2, 0.0)
    handle.swap(copy)
    assert handle.model_id == second
    b = tracker.recommend("h", 2, 0.0)
    tracker.click("h", b[0].product_id)
    log.close()
    imp_a, imp_b, click = read_log(tmp_path / "log").records
    assert (a.model_id, imp_a["model_id"]) == (first, first)
    assert (b.model_id, imp_b["model_id"], click["model_id"]) == (second, second, second)
    stale = ModelHandle(copy)  # its directory rebuilt after loading: refused, not misnamed
    (copy / "metadata.json").write_text("{}")
    with pytest.raises(reco_fast.ArtifactError, match="changed since the model was loaded"):
        _ = stale.model_id
