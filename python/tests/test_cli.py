"""The ``pymooncake`` command: bench, metadata-server, version."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pmtest import ROOT, Mem

from pymooncake import _bench, cli
from pymooncake._version import __version__
from pymooncake.engine import TransferEngine


def pymooncake(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MC_LOG_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "pymooncake", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT, check=False)


def test_version() -> None:
    r = pymooncake("version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"pymooncake {__version__}"


@pytest.mark.parametrize("operation", ["write", "read"])
def test_bench_loopback(operation: str) -> None:
    r = pymooncake(
        "bench", "--mode", "loopback", "--operation", operation, "--duration", "1", "--threads", "2",
        "--batch_size", "8", "--block_size", "16K", "--buffer_size", "4M",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = dict(re.findall(r"^  (\S+(?: \S+)?)\s{2,}(.+)$", r.stdout, re.M))
    assert rows["mode"] == "loopback"
    assert rows["operation"] == operation
    assert rows["errors"] == "0"
    assert int(rows["batches"]) > 0
    assert float(rows["throughput"].split()[0]) > 0
    assert "latency p99" in rows
    assert "GB/s" in r.stderr  # the live progress line
    # The engine's own figures for its transport: every request of the run.
    m = re.match(r"(\d+\.\d+) GB in ([\d,]+) requests, none failed; latency p50 <= [\d,]+ us", rows[f"tcp {operation}"])
    assert m, rows[f"tcp {operation}"]
    assert int(m.group(2).replace(",", "")) == int(rows["batches"]) * 8
    assert int(rows["tcp connections"].split()[0]) >= 1


def _quick_bench(*flags: str, level: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MC_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    if level is not None:
        env["MC_LOG_LEVEL"] = level
    args = ["bench", "--mode", "loopback", "--duration", "0.2", "--threads", "1", "--batch_size", "4", "--block_size", "4K", "--buffer_size", "1M", *flags]
    r = subprocess.run([sys.executable, "-m", "pymooncake", *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    assert "throughput" in r.stdout
    return r


@pytest.mark.parametrize(
    ("flag", "env", "info"),
    [
        (None, None, False),  # the command's default: warnings and above
        ("info", None, True),
        (None, "INFO", True),  # MC_LOG_LEVEL when no flag
        ("warning", "INFO", False),  # the flag wins
        ("error", "TRACE", False),
    ],
)
def test_bench_log_level(flag: str | None, env: str | None, info: bool) -> None:
    r = _quick_bench(*(["--log-level", flag] if flag else []), level=env)
    engine_info = [line for line in r.stderr.splitlines() if "\tINFO\t" in line]
    if info:
        assert any("engine started" in line for line in engine_info), r.stderr
    else:
        assert engine_info == [], r.stderr
    assert "GB/s" in r.stderr  # the progress line is there either way


def test_library_keeps_mooncakes_info_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MC_LOG_LEVEL"}
    code = "from pymooncake.engine import TransferEngine\ne = TransferEngine()\nassert e.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '') == 0\ne.close()\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(env, PYTHONPATH=str(ROOT)), timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    assert any("\tINFO\t" in line and "engine started" in line for line in r.stderr.splitlines()), r.stderr


def test_main_restores_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MC_LOG_LEVEL", raising=False)
    assert cli.main(["version"]) == 0
    assert "MC_LOG_LEVEL" not in os.environ
    monkeypatch.setenv("MC_LOG_LEVEL", "ERROR")
    assert cli.main(["version"]) == 0
    assert os.environ["MC_LOG_LEVEL"] == "ERROR"
    assert capsys.readouterr().out.split("\n") == [f"pymooncake {__version__}"] * 2 + [""]


def test_log_level_flag_rejects_unknown_levels() -> None:
    r = pymooncake("bench", "--log-level", "loud")
    assert r.returncode == 2
    assert "--log-level" in r.stderr


def test_bench_rejects_a_buffer_too_small() -> None:
    r = pymooncake("bench", "--mode", "loopback", "--buffer_size", "1M", "--block_size", "64K", "--batch_size", "128")
    assert r.returncode == 2
    assert "buffer_size" in r.stderr


def test_bench_initiator_without_target_fails_cleanly() -> None:
    r = pymooncake("bench", "--mode", "initiator", "--segment_id", "127.0.0.1:1", "--duration", "1", "--buffer_size", "64M")
    assert r.returncode == 2
    assert "cannot find a buffer" in r.stderr


def test_bench_target_and_initiator_processes() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MC_LOG_LEVEL="WARNING")
    target = subprocess.Popen(
        [sys.executable, "-m", "pymooncake", "bench", "--mode", "target", "--buffer_size", "8M"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert target.stdout is not None
        line = target.stdout.readline()
        m = re.search(r"--segment_id (\S+)", line)
        assert m, line
        r = pymooncake(
            "bench", "--mode", "initiator", "--segment_id", m.group(1), "--duration", "1",
            "--threads", "2", "--batch_size", "4", "--block_size", "64K", "--buffer_size", "8M",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "throughput" in r.stdout
    finally:
        target.send_signal(signal.SIGINT)
        assert target.wait(timeout=30) == 0
        if target.stdout:
            target.stdout.close()
        if target.stderr:
            target.stderr.close()


def test_result_math() -> None:
    res = _bench.Result(_bench.Config(block_size=1000, batch_size=10), seconds=2.0, batches=100, latencies_ns=list(range(1, 101)))
    assert res.bytes == 1_000_000
    assert res.gbps == pytest.approx(0.0005)
    assert res.ops_per_s == 500
    assert res.percentile_us(50) == pytest.approx(0.05)
    assert res.percentile_us(99) == pytest.approx(0.099)
    assert "0.001 GB/s" in _bench.format_result(res)


def test_transport_rows() -> None:
    hist = {"bounds": [10, 20, 50], "counts": [1, 97, 1, 1], "count": 100, "sum": 0}
    empty = {"bounds": [10], "counts": [0, 0], "count": 0, "sum": 0}
    d = {"bytes": 2_000_000_000, "requests": 100, "failures": {"peer": 2, "timeout": 0}, "latency_us": hist, "size_bytes": hist}
    idle = {"bytes": 0, "requests": 0, "failures": {}, "latency_us": empty, "size_bytes": empty}
    metrics = {"transports": {"tcp": {"read": idle, "write": d}}, "peers": {"p": {"connections": {"tcp": 3}}, "q": {"connections": {"tcp": 1}}}}
    rows = dict(_bench._transport_rows(metrics))
    assert rows == {
        "tcp write": "2.000 GB in 100 requests, 2 peer failed; latency p50 <= 20 us, p99 <= 50 us (one request)",
        "tcp connections": "4 open",
    }
    assert _bench._hist_quantile(hist, 1.0) == "> 50"
    assert _bench._hist_quantile(empty, 0.5) == "-"
    assert _bench._transport_rows({}) == []


def start_metadata_server(persist: Path) -> tuple[str, subprocess.Popen[str]]:
    """Start ``pymooncake metadata-server --persist persist``; return its URL and process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MC_LOG_LEVEL="WARNING")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymooncake", "metadata-server", "--host", "127.0.0.1", "--port", "0", "--persist", str(persist)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+/metadata)", line)
    assert m, line + (proc.stderr.read() if proc.stderr else "")
    return m.group(1), proc


def stop_metadata_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def http_call(method: str, url: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request to a metadata server; return the status and body."""
    req = urllib.request.Request(f"{url}?key={urllib.parse.quote(key, safe='')}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def metadata_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    persist = tmp_path / "meta.db"
    url, proc = start_metadata_server(persist)
    yield url, proc, persist
    stop_metadata_server(proc)


def test_metadata_server_serves_engines(metadata_server: tuple[str, subprocess.Popen[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, proc, persist = metadata_server
    monkeypatch.setenv("MC_TCP_BIND_ADDRESS", "127.0.0.1")
    a, b = TransferEngine(), TransferEngine()
    assert a.initialize("127.0.0.1:30001", url, "tcp", "") == 0
    assert b.initialize_ext("127.0.0.1:30002", url.removeprefix("http://"), "tcp", "", "http") == 0
    try:
        assert b.get_segment_name() == "127.0.0.1:30002"  # store mode keeps the given name
        ma, mb = Mem(4096), Mem(4096)
        assert a.register_memory(ma.addr, ma.size) == 0
        assert b.register_memory(mb.addr, mb.size) == 0
        ma.write(0, b"through the metadata server")
        assert a.transfer_sync_write("127.0.0.1:30002", ma.addr, mb.addr, 27) == 0
        assert mb.read(0, 27) == b"through the metadata server"
        assert a.get_first_buffer_address("127.0.0.1:30002") == mb.addr
    finally:
        a.close()
        b.close()
    assert http_call("PUT", url, "mooncake/kept", b'{"a":1}') == (200, b"metadata updated")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    url, proc = start_metadata_server(persist)
    try:
        assert http_call("GET", url, "mooncake/kept") == (200, b'{"a":1}')
    finally:
        stop_metadata_server(proc)


def test_metadata_server_persist_survives_kill(metadata_server: tuple[str, subprocess.Popen[str], Path]) -> None:
    url, proc, persist = metadata_server
    for i in range(20):
        assert http_call("PUT", url, f"mooncake/k{i}", b"v%d" % i)[0] == 200
    assert http_call("DELETE", url, "mooncake/k0")[0] == 200
    proc.kill()  # SIGKILL, right after the acknowledged writes
    proc.wait()
    url, proc = start_metadata_server(persist)
    try:
        assert http_call("GET", url, "mooncake/k0")[0] == 404
        for i in range(1, 20):
            assert http_call("GET", url, f"mooncake/k{i}") == (200, b"v%d" % i)
    finally:
        stop_metadata_server(proc)


def test_metadata_server_stops_on_sigint(metadata_server: tuple[str, subprocess.Popen[str], Path]) -> None:
    _, proc, _ = metadata_server
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def test_metadata_server_port_in_use(metadata_server: tuple[str, subprocess.Popen[str], Path]) -> None:
    url, _, _ = metadata_server
    port = url.split(":")[2].split("/")[0]
    r = pymooncake("metadata-server", "--host", "127.0.0.1", "--port", port)
    assert r.returncode == 1
    assert "listen" in r.stderr


def test_parser_sizes() -> None:
    assert cli._size("64K") == 65536
    assert cli._size("1MiB") == 1 << 20
    assert cli._size("2g") == 2 << 30
    assert cli._size("4096") == 4096
    with pytest.raises(Exception, match="byte count"):
        cli._size("lots")


def test_topology_command() -> None:
    r = pymooncake("topology")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)
