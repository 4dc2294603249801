"""Issue #14, first part: the collector service, a real uvicorn on loopback in front of a real
PostgreSQL, fed by batches a vantage's own database gives (``blockwatch.collector.client``).

What is checked: a run stored exactly once however often it is sent; tokens that are missing,
wrong or revoked store nothing; another vantage's data, malformed records, oversized batches and
decompression bombs are refused whole; no client address in the database or the logs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from blockwatch.collector import tokens
from blockwatch.collector.batch import MAX_BODY, MAX_DECODED, encode
from blockwatch.collector.client import batches
from blockwatch.probes.model import Measurement, Run, Target, TCPObservation, Verdict
from blockwatch.probes.runner import new_id
from blockwatch.storage import open_store

uvicorn = pytest.importorskip("uvicorn")

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


@dataclass
class Collector:
    url: str
    store: Any
    db: str
    logs: list[str]

    def post(self, body: bytes, token: str | None, encoding: str = "gzip") -> httpx.Response:
        headers = {"Content-Encoding": encoding}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(f"{self.url}/api/v1/submit", content=body, headers=headers,
                          timeout=30)

    def sent_verdicts(self) -> int:
        """The verdicts the vantages sent (not the collector's own judgement)."""
        return sum(v.details.get("judged_by") != "collector" for v in self.store.verdicts())

    def count(self, table: str) -> int:
        from sqlalchemy import text

        with self.store.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


class _Logs(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(db: str, port: int | None = None, rate: float = 1000, burst: float = 1000,
            **tls: str) -> Iterator[Collector]:
    from blockwatch.collector.app import make_server

    store = open_store(db)
    port = port or _free_port()
    logs: list[str] = []
    handler = _Logs(logs)
    server = make_server(store, "127.0.0.1", port, rate=rate, burst=burst, **tls)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    # after uvicorn's own logging configuration, which replaces its loggers' handlers
    for name in ("blockwatch.collector", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addHandler(handler)
    try:
        yield Collector(f"http://127.0.0.1:{port}", store, db, logs)
    finally:
        server.should_exit = True
        thread.join(20)
        for name in ("blockwatch.collector", "uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).removeHandler(handler)
        store.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def collector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Collector]:
    db = (request.getfixturevalue("postgres_url") if request.param == "postgresql"
          else f"sqlite:///{tmp_path / 'collector.db'}")
    with running(db) as c:
        yield c


def vantage_db(tmp_path: Path, vantage: str, n: int = 5, name: str = "local") -> tuple[str, str]:
    """A vantage's own database with one complete run of ``n`` measurements and their
    verdicts; (its URL, the run id)."""
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    run = Run(id=new_id(), vantage=vantage, started_at=T0, country="ZZ", status="running")
    ms = []
    for i in range(n):
        obs = TCPObservation(address=f"192.0.2.{i + 1}", port=443, t0=0.0, t=0.05,
                             failure=None if i % 2 else "connection_reset")
        ms.append(Measurement(
            id=new_id(), run_id=run.id, vantage=vantage,
            target=Target(service=f"svc{i % 3}", probe="tcp", host=f"h{i}.test", port=443),
            probe_version="1", started_at=T0 + dt.timedelta(seconds=i), runtime_s=0.05,
            observations=(obs,), failure=obs.failure,
            failed_operation="connect" if obs.failure else None))
    verdicts = [Verdict(verdict="ok" if m.failure is None else "inconclusive",
                        rule_id="ok.no_failure" if m.failure is None else "failure.no_control",
                        analyzer_version="8", service=m.service, measurement_id=m.id)
                for m in ms]
    service = [Verdict(verdict="inconclusive", rule_id="service.inconclusive",
                       analyzer_version="8", service=f"svc{i}") for i in range(3)]
    with open_store(url) as store:
        store.start_run(run)
        store.add_measurements(ms, verdicts, run_id=run.id)
        store.finish_run(run.id, status="complete", finished_at=T0 + dt.timedelta(minutes=1),
                         summary={"measurements": n})
        store.add_verdicts(run.id, service)
    return url, run.id


def all_batches(url: str, run_id: str) -> list[bytes]:
    with open_store(url) as store:
        return list(batches(store, run_id))


def lines(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in gzip.decompress(body).splitlines() if x]


def regzip(records: list[dict[str, Any]]) -> bytes:
    return gzip.compress(b"\n".join(orjson.dumps(r) for r in records))


def test_a_run_is_stored_once_however_often_it_is_sent(collector: Collector,
                                                        tmp_path: Path) -> None:
    token = tokens.add(collector.store, "home-pi", country="IR", asn=58224)
    url, run_id = vantage_db(tmp_path, "home-pi", n=5)
    [body] = all_batches(url, run_id)
    first = collector.post(body, token)
    assert first.status_code == 200, first.text
    assert first.json() == {"runs": 1, "measurements": 5, "verdicts": 8, "duplicates": 0}
    again = collector.post(body, token)  # the answer was lost: the vantage sends it again
    assert again.status_code == 200 and again.json() == {
        "runs": 0, "measurements": 0, "verdicts": 0, "duplicates": 14}
    assert (collector.count("runs"), collector.count("measurements"),
            collector.sent_verdicts()) == (1, 5, 8)
    run = collector.store.get_run(run_id)
    # the token, not the volunteer's config, says where the vantage is
    assert (run.vantage, run.country, run.asn, run.status) == ("home-pi", "IR", 58224,
                                                                "complete")
    with open_store(url) as local:
        sent = {m.id: m for m in local.measurements(run_id=run_id)}
    got = {m.id: m for m in collector.store.measurements(run_id=run_id)}
    assert got == sent  # observations and all, as the vantage stored them
    who = httpx.get(f"{collector.url}/api/v1/token",
                    headers={"Authorization": f"Bearer {token}"})
    assert who.json() == {"vantage": "home-pi", "country": "IR", "asn": 58224}
    assert httpx.get(f"{collector.url}/healthz").json() == {"status": "ok"}


def test_a_long_run_in_several_batches_in_any_order(collector: Collector, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from blockwatch.collector import client

    monkeypatch.setattr(client, "PER_BATCH", 4)
    token = tokens.add(collector.store, "vps")
    url, run_id = vantage_db(tmp_path, "vps", n=10)
    parts = all_batches(url, run_id)
    assert len(parts) == 3
    # a later part before the first: its run is not there yet, so it is refused (422) and
    # stored after the first, as the outbox retries it
    assert collector.post(parts[2], token).status_code == 422
    assert collector.count("measurements") == 0
    for body in (parts[0], parts[2], parts[1], parts[1]):
        assert collector.post(body, token).status_code == 200
    assert (collector.count("measurements"), collector.sent_verdicts()) == (10, 13)
    # all of the run is here: the collector judged it (10 measurements, 3 services)
    collector_verdicts(collector, run_id)
    own = [v for v in collector.store.verdicts(run_id=run_id)
           if v.details.get("judged_by") == "collector"]
    assert len(own) == 13


def test_a_run_is_cut_by_size_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Certificate chains make TLS measurements large: a batch is cut at PER_BATCH_BYTES
    whatever its count, so none can pass the collector's MAX_DECODED."""
    from blockwatch.collector import client
    from blockwatch.collector.batch import parse

    url, run_id = vantage_db(tmp_path, "vps", n=10)
    assert len(all_batches(url, run_id)) == 1
    monkeypatch.setattr(client, "PER_BATCH_BYTES", 1)  # each measurement passes it alone
    parts = all_batches(url, run_id)
    assert len(parts) == 11  # ten of one measurement, the last with the service verdicts
    decoded = [parse(gzip.decompress(p)) for p in parts]
    assert [len(b.measurements) for b in decoded] == [1] * 10 + [0]
    assert len(decoded[0].runs) == 1 and sum(len(b.verdicts) for b in decoded) == 13


def test_no_token_a_wrong_one_or_a_revoked_one_stores_nothing(collector: Collector,
                                                              tmp_path: Path) -> None:
    token = tokens.add(collector.store, "laptop")
    url, run_id = vantage_db(tmp_path, "laptop")
    [body] = all_batches(url, run_id)
    assert collector.post(body, None).status_code == 401
    assert collector.post(body, "bwc_" + "A" * 43).status_code == 401
    assert collector.post(body, token[:-1]).status_code == 401
    tokens.revoke(collector.store, "laptop")
    refused = collector.post(body, token)
    assert refused.status_code == 403 and "revoked" in refused.json()["error"]
    assert (collector.count("runs"), collector.count("measurements")) == (0, 0)


def test_another_vantages_data_is_refused_whole(collector: Collector, tmp_path: Path) -> None:
    mine = tokens.add(collector.store, "mine")
    theirs = tokens.add(collector.store, "theirs")
    url, run_id = vantage_db(tmp_path, "theirs", name="theirs")
    [body] = all_batches(url, run_id)
    assert collector.post(body, mine).status_code == 403  # the batch says "theirs"
    # relabelled as mine, but the records still say theirs
    records = lines(body)
    records[0]["vantage"] = "mine"
    assert collector.post(regzip(records), mine).status_code == 403
    assert collector.count("runs") == 0
    # theirs stores it; mine then cannot add measurements to that run
    assert collector.post(body, theirs).status_code == 200
    own_url, own_run = vantage_db(tmp_path, "mine", name="mine")
    [own] = all_batches(own_url, own_run)
    hijack = lines(own)
    for r in hijack[1:]:
        for record in r.values():
            if "run_id" in record:
                record["run_id"] = run_id
    hijack = [h for h in hijack if "run" not in h]
    assert collector.post(regzip(hijack), mine).status_code == 403
    assert collector.count("measurements") == 5


@pytest.mark.parametrize(("change", "says"), [
    (lambda r: r.__setitem__(1, {"run": {**r[1]["run"], "started_at": "yesterday"}}),
     "started_at"),
    (lambda r: r.__setitem__(2, {"measurement": {**r[2]["measurement"], "id": "x"}}), "id"),
    (lambda r: r[2]["measurement"].__setitem__("observations", [{"layer": "tcp"}]),
     "observations[0]"),
    (lambda r: r[2]["measurement"].__setitem__("runtime_s", float("inf")), "runtime_s"),
    (lambda r: r[2]["measurement"].__setitem__("extra", 1), "extra"),
    (lambda r: r.insert(3, {"poem": {}}), "unknown record"),
    (lambda r: r.insert(3, r[2] | {"measurement": {**r[2]["measurement"], "probe": "dns"}}),
     "appears twice, differently"),
    (lambda r: r.__setitem__(0, {"batch": 2, "vantage": "v"}), "format"),
])
def test_a_malformed_batch_is_refused_whole(collector: Collector, tmp_path: Path,
                                            change: Any, says: str) -> None:
    token = tokens.add(collector.store, "v")
    url, run_id = vantage_db(tmp_path, "v")
    [body] = all_batches(url, run_id)
    records = lines(body)
    change(records)
    refused = collector.post(regzip(records), token)
    assert refused.status_code == 422, refused.text
    assert says in refused.json()["error"]
    assert (collector.count("runs"), collector.count("measurements"),
            collector.count("verdicts")) == (0, 0, 0)


def test_the_same_record_twice_in_a_batch_is_kept_once(collector: Collector,
                                                       tmp_path: Path) -> None:
    token = tokens.add(collector.store, "v")
    url, run_id = vantage_db(tmp_path, "v")
    [body] = all_batches(url, run_id)
    records = lines(body)
    done = collector.post(regzip([*records, records[1], records[2], records[3]]), token)
    assert done.status_code == 200 and done.json()["duplicates"] == 3, done.text
    assert (collector.count("runs"), collector.count("measurements")) == (1, 5)


def test_oversized_batches_and_decompression_bombs_are_refused(collector: Collector) -> None:
    import zstandard

    token = tokens.add(collector.store, "v")
    header = orjson.dumps({"batch": 1, "vantage": "v"}) + b"\n"
    bomb = header + b" " * (MAX_DECODED + 2**20)
    for body, encoding in ((gzip.compress(bomb, 9), "gzip"),
                           (zstandard.ZstdCompressor(level=19).compress(bomb), "zstd")):
        assert len(body) < MAX_BODY / 16  # small on the wire
        refused = collector.post(body, token, encoding)
        assert refused.status_code == 413, (encoding, refused.text)
    big = collector.post(b"\0" * (MAX_BODY + 1), token, "identity")
    assert big.status_code == 413
    assert collector.post(b"not gzip", token, "gzip").status_code == 400
    assert collector.post(header, token, "br").status_code == 415
    # one encoding: a body compressed twice ("gzip, gzip", 2.5 KB for gigabytes) is refused
    twice = gzip.compress(gzip.compress(bomb, 9), 9)
    assert collector.post(twice, token, "gzip, gzip").status_code == 415
    assert collector.count("runs") == 0


def test_no_client_address_is_stored_or_logged(collector: Collector, tmp_path: Path) -> None:
    token = tokens.add(collector.store, "v")
    url, run_id = vantage_db(tmp_path, "v")
    [body] = all_batches(url, run_id)
    assert collector.post(body, token).status_code == 200
    collector.post(body, "bwc_wrong")
    with collector.store.engine.connect() as conn:
        from sqlalchemy import text

        dump = json.dumps([list(map(str, r)) for t in ("runs", "measurements", "verdicts",
                                                       "collector_tokens")
                           for r in conn.execute(text(f"SELECT * FROM {t}"))])
    assert "127.0.0.1" not in dump and token not in dump
    # uvicorn's access log (which names the client) is off even with a handler attached to it
    assert collector.logs and not [x for x in collector.logs if "127.0.0.1" in x and
                                   "Uvicorn running on" not in x], collector.logs


def test_encode_writes_what_parse_reads() -> None:
    from blockwatch.collector.batch import decompress, parse

    run = {"id": new_id(), "vantage": "v", "started_at": T0.isoformat(), "status": "complete"}
    batch = parse(decompress(encode("v", [run], [], []), "gzip"))
    assert batch.vantage == "v" and batch.runs[0].id == run["id"]


def one_run(tmp_path: Path, vantage: str, failure: str | None) -> tuple[str, str]:
    """A vantage's database with one run: a TCP connection to 192.0.2.10:443 for service
    ``news``, failing with ``failure`` (None: connected)."""
    url = f"sqlite:///{tmp_path / f'{vantage}.db'}"
    run = Run(id=new_id(), vantage=vantage, started_at=T0)
    obs = TCPObservation(address="192.0.2.10", port=443, t0=0.0, t=0.05, failure=failure)
    m = Measurement(id=new_id(), run_id=run.id, vantage=vantage,
                    target=Target(service="news", probe="tcp", host="192.0.2.10", port=443),
                    probe_version="1", started_at=T0, runtime_s=0.05, observations=(obs,),
                    failure=failure, failed_operation="connect" if failure else None)
    with open_store(url) as store:
        store.start_run(run)
        store.add_measurements([m], run_id=run.id)
        store.finish_run(run.id, status="complete", finished_at=T0 + dt.timedelta(seconds=5),
                         summary={"measurements": 1})
    return url, run.id


def collector_verdicts(collector: Collector, run_id: str) -> dict[str | None, Verdict]:
    """The collector's own current verdicts of a run (waiting for it to judge)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        mine = [v for v in collector.store.verdicts(run_id=run_id)
                if v.details.get("judged_by") == "collector"]
        if mine:
            return {v.measurement_id: v for v in mine}
        time.sleep(0.1)
    raise AssertionError(f"the collector did not judge run {run_id}")


def test_a_failure_is_blocking_against_a_control_vantage_that_came_through_the_collector(
        collector: Collector, tmp_path: Path) -> None:
    """Issue #14: a censored vantage's reset is inconclusive alone; the collector judges it
    against the control vantage's connection, which arrived through the collector too."""
    vps = tokens.add(collector.store, "vps", control=True)
    home = tokens.add(collector.store, "home", country="IR")
    vps_url, vps_run = one_run(tmp_path, "vps", None)
    home_url, home_run = one_run(tmp_path, "home", "connection_reset")
    for url, run_id, token in ((vps_url, vps_run, vps), (home_url, home_run, home)):
        [body] = all_batches(url, run_id)
        assert collector.post(body, token).status_code == 200
    judged = collector_verdicts(collector, home_run)
    measurement = next(v for k, v in judged.items() if k is not None)
    assert (measurement.verdict, measurement.rule_id) == ("tcp_blocked",
                                                          "tcp.failure_vs_control")
    assert (judged[None].verdict, judged[None].layer) == ("blocked", "tcp")
    run = collector.store.get_run(home_run)
    assert run.inputs is not None and run.inputs.control_vantages == ("vps",)
    # the control's own run is judged too, against no one but itself: ok
    assert collector_verdicts(collector, vps_run)[None].verdict == "ok"


def test_https_with_the_collectors_own_certificate(tmp_path: Path) -> None:
    """uvicorn serves TLS itself (--certfile/--keyfile, a trustme CA here); a vantage trusts it
    through [collector] ca_file, and without it the certificate is refused and nothing sent."""
    import trustme

    from blockwatch.collector import outbox

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = (tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    with running(db, certfile=str(certfile), keyfile=str(keyfile)) as collector:
        token = tokens.add(collector.store, "v")
        url, run_id = vantage_db(tmp_path, "v")
        https = collector.url.replace("http://", "https://")
        with open_store(url) as local:
            outbox.enqueue(local, run_id, https)
            untrusted = outbox.flush(local, outbox.Sending(url=https, token=token, timeout=5))
            assert list(untrusted.retry) == [run_id]
            assert "CERTIFICATE_VERIFY_FAILED" in untrusted.retry[run_id]
            trusted = outbox.flush(local, outbox.Sending(url=https, token=token, timeout=5,
                                                         ca_file=str(cafile)), force=True)
            assert trusted.sent == [run_id] and outbox.entries(local) == []
        assert collector.count("measurements") == 5


def test_the_deploy_units_command_line_is_real() -> None:
    import shlex

    from blockwatch.cli import build_parser

    unit = (Path(__file__).parents[1] / "deploy" / "blockwatch-collector.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    args = build_parser().parse_args(shlex.split(line.partition("=")[2])[1:])
    assert (args.command, args.collector_command, args.host, args.port) == (
        "collector", "serve", "127.0.0.1", 8471)


def test_researchers_read_every_vantage_with_a_read_only_role(postgres_url: str,
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    """The README's role (pg_read_all_data) reads every vantage that came through the
    collector, with `blockwatch query` and `report`, and cannot write."""
    from sqlalchemy import create_engine, text

    from blockwatch.cli import main

    with running(postgres_url) as collector:
        for name in ("home", "vps"):
            token = tokens.add(collector.store, name, control=name == "vps")
            url, run_id = one_run(tmp_path, name, "connection_reset" if name == "home"
                                  else None)
            [body] = all_batches(url, run_id)
            assert collector.post(body, token).status_code == 200
    admin = create_engine(postgres_url)
    role = f"researcher_{new_id()[-8:]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT pg_read_all_data TO {role}"))
    admin.dispose()
    reader = postgres_url.replace("://postgres@", f"://{role}@")
    assert reader != postgres_url
    code = main(["query", "--db", reader, "-f", "json",
                 "SELECT vantage, count(*) AS n FROM runs GROUP BY vantage ORDER BY vantage"])
    out = capsys.readouterr().out
    assert code == 0 and [r["vantage"] for r in json.loads(out)] == ["home", "vps"]
    engine = create_engine(reader)
    with pytest.raises(Exception, match="permission denied"), engine.begin() as conn:
        conn.execute(text("DELETE FROM runs"))
    engine.dispose()
    assert main(["report", "timeline", "--db", reader]) == 0
    assert "home" in capsys.readouterr().out


def test_a_resumed_submission_starts_after_the_batches_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blockwatch.collector import client

    monkeypatch.setattr(client, "PER_BATCH", 4)
    url, run_id = vantage_db(tmp_path, "v", n=10)
    with open_store(url) as store:
        whole = [lines(b) for b in batches(store, run_id)]
        assert [lines(b) for b in batches(store, run_id, start=1)] == whole[1:]
        assert list(batches(store, run_id, start=3)) == []  # all sent already
    assert "run" in whole[0][1] and not any("run" in r for r in whole[1][1:])


def test_a_token_over_its_rate_is_told_when_to_come_back(tmp_path: Path) -> None:
    """Submissions and controls queries share a token's rate (a token bucket): past the burst,
    429 with Retry-After, and nothing stored; another token is not affected."""
    with running(f"sqlite:///{tmp_path / 'collector.db'}", rate=0.2, burst=2) as collector:
        busy, other = tokens.add(collector.store, "busy"), tokens.add(collector.store, "other")
        url, run_id = vantage_db(tmp_path, "busy")
        [body] = all_batches(url, run_id)
        assert [collector.post(body, busy).status_code for _ in range(2)] == [200, 200]
        refused = collector.post(body, busy)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        again = httpx.post(f"{collector.url}/api/v1/controls/x", json={},
                           headers={"Authorization": f"Bearer {busy}"})
        assert again.status_code == 429
        url2, run2 = vantage_db(tmp_path, "other", name="other")
        [body2] = all_batches(url2, run2)
        assert collector.post(body2, other).status_code == 200
        assert collector.count("runs") == 2


def test_the_service_is_warm_before_its_first_request(postgres_url: str) -> None:
    """At startup (before uvicorn accepts a connection) the pool's connections are opened and
    have read the tables a batch writes, and the judging worker is up: the first submissions
    after a (re)start took 0.4-0.6 s more than later ones without this (benchmarks/
    collector.py's slowest batches were all in its first second)."""
    with running(postgres_url) as c:
        pool = c.store.engine.pool
        assert pool.checkedin() == pool.size() == 5  # open_store's default pool, all open
        workers = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "multiprocessing"],
                                 capture_output=True, text=True, check=False).stdout.split()
        assert workers, "no judging worker was started with the service"
