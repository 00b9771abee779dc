"""Metrics from Python: ``get_metrics`` (a pymooncake addition), the
Prometheus endpoint (``PYMOONCAKE_METRICS_PORT``) and Mooncake's periodic
summary line (``MC_TE_METRIC``)."""

from __future__ import annotations

import logging
import urllib.request

import pytest
from pmtest import Mem, run_python

from pymooncake.engine import TransferEngine

Peers = tuple[TransferEngine, Mem, TransferEngine, Mem]


@pytest.fixture(autouse=True)
def _over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures checked here are TCP's (connections included): the
    engines of this process leave the same-host transports out."""
    monkeypatch.setenv("PYMOONCAKE_SAME_HOST", "0")


def test_same_host_transfers_counted_under_their_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMOONCAKE_SAME_HOST", "1")
    a, b = TransferEngine(), TransferEngine()
    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    assert b.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    ma, mb = Mem(1 << 16), Mem(1 << 16)
    try:
        assert a.register_memory(ma.addr, ma.size) == 0
        assert b.register_memory(mb.addr, mb.size) == 0
        assert a.transfer_sync_write(b.get_segment_name(), ma.addr, mb.addr, 3000) == 0
        m = a.get_metrics()
        assert m["peers"][b.get_segment_name()]["open"] == {"hostmem": 1}
        assert m["transports"]["hostmem"]["write"]["bytes"] == 3000
        assert "tcp" not in m["transports"]
    finally:
        a.close()
        b.close()


def test_get_metrics_counts_transfers(peers: Peers) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    assert a.transfer_sync_write(seg, ma.addr, mb.addr, 5000) == 0
    assert a.batch_transfer_sync_read(seg, [ma.addr, ma.addr + 4096], [mb.addr, mb.addr + 4096], [100, 200]) == 0
    assert a.transfer_sync_read(seg, ma.addr, mb.addr + (1 << 20) - 10, 100) != 0  # outside the target's memory

    m = a.get_metrics()
    tcp = m["transports"]["tcp"]
    assert tcp["write"]["bytes"] == 5000
    assert tcp["write"]["requests"] == 1
    assert tcp["read"]["bytes"] == 300
    assert tcp["read"]["requests"] == 2, "a request refused before it was sent is not counted"
    assert sum(tcp["write"]["failures"].values()) == 0
    lat = tcp["read"]["latency_us"]
    assert lat["count"] == 2
    assert sum(lat["counts"]) == 2
    assert len(lat["counts"]) == len(lat["bounds"]) + 1
    size = tcp["write"]["size_bytes"]
    assert size["counts"][size["bounds"].index(16384)] == 1, "5000 bytes: the 4 KiB-16 KiB bucket"
    peer = m["peers"][seg]
    assert (peer["write_bytes"], peer["read_bytes"], peer["failures"]) == (5000, 300, 0)
    assert peer["open"] == {"tcp": 1}
    assert peer["connections"]["tcp"] >= 1
    assert m["registered_bytes"] == {"cpu": 1 << 20}
    assert m["batches_in_flight"] == 0
    assert m["endpoint"] == "", "no endpoint unless asked for"
    assert b.get_metrics()["transports"] == {}, "the target initiated nothing"


def test_get_metrics_unusable(caplog: pytest.LogCaptureFixture) -> None:
    e = TransferEngine()
    with caplog.at_level(logging.ERROR, logger="pymooncake"):
        assert e.get_metrics() == {}
    assert "not initialized" in caplog.text
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    assert e.get_metrics()["transports"] == {}
    e.close()
    assert e.get_metrics() == {}


def test_endpoint_serves_prometheus_text(monkeypatch: pytest.MonkeyPatch, peers: Peers) -> None:
    monkeypatch.setenv("PYMOONCAKE_METRICS_PORT", "0")
    monkeypatch.setenv("PYMOONCAKE_METRICS_HOST", "127.0.0.1")
    _, _, b, mb = peers
    a = TransferEngine()
    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        m2 = Mem(1 << 16)
        assert a.register_memory(m2.addr, m2.size) == 0
        assert a.transfer_sync_write(b.get_segment_name(), m2.addr, mb.addr, 1 << 16) == 0
        addr = a.get_metrics()["endpoint"]
        assert addr.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'pymooncake_write_bytes_total{transport="tcp"} 65536' in text
        assert f'pymooncake_peer_write_bytes_total{{peer="{b.get_segment_name()}"}} 65536' in text
        assert "# TYPE pymooncake_write_latency_us histogram" in text
        a.unregister_memory(m2.addr)
    finally:
        a.close()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PYMOONCAKE_METRICS_PORT", "ninety"),
        ("PYMOONCAKE_METRICS_PORT", "70000"),
        ("PYMOONCAKE_METRICS_MAX_PEERS", "0"),
        ("MC_TE_METRIC", "maybe"),
        ("MC_TE_METRIC_INTERVAL_SECONDS", "0"),
    ],
)
def test_bad_metrics_variable_fails_initialize(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    e = TransferEngine()
    with caplog.at_level(logging.ERROR, logger="pymooncake"):
        assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == -1
    assert var in caplog.text


def test_mooncake_metric_line() -> None:
    """MC_TE_METRIC=1 writes Mooncake's summary to the engine's log
    (stderr), every MC_TE_METRIC_INTERVAL_SECONDS."""
    code = (
        "import time\n"
        "from pmtest import Mem, new_engine\n"
        "a, b = new_engine(), new_engine()\n"
        "ma, mb = Mem(1 << 20), Mem(1 << 20)\n"
        "assert a.register_memory(ma.addr, ma.size) == 0 and b.register_memory(mb.addr, mb.size) == 0\n"
        "assert a.transfer_sync_write(b.get_segment_name(), ma.addr, mb.addr, 1 << 20) == 0\n"
        "time.sleep(2.5)\n"
        "a.close(); b.close()\n"
    )
    env = {"MC_TE_METRIC": "1", "MC_TE_METRIC_INTERVAL_SECONDS": "1", "MC_LOG_LEVEL": "INFO"}
    r = run_python("import sys; sys.path.insert(0, 'python/tests')\n" + code, env=env)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "[Metrics] Transfer Engine Stats (over last 1s):" in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Throughput: 1.00 MB/s | Latency Distribution (count=1): " in lines[0]
