"""The loopback proxy of tests/s3proxy.py: counters, latency and faults, seen from an s3fs client."""

from __future__ import annotations

import socket
import time

import aiohttp
import botocore.exceptions
import fsspec
import pytest

from s3proxy import Fault, S3Proxy

PAYLOAD = bytes(range(256)) * 400  # 100 KB, several reads of the proxy's relay loop
# What a failed read raises through s3fs: translated S3 errors and timeouts are OSError, a cut
# body is aiohttp's, a connection refused or reset before an answer is botocore's.
CLIENT_ERRORS = (OSError, aiohttp.ClientError, botocore.exceptions.BotoCoreError)


def _client(proxy: S3Proxy) -> fsspec.AbstractFileSystem:
    """An s3fs client through ``proxy`` that gives up at once: 1 s timeouts, no retries at either level."""
    options = {
        **proxy.storage_options,
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"total_max_attempts": 1, "mode": "standard"}},
    }
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    fs.retries = 1  # s3fs's own retry loop around botocore's (a class attribute, 5 by default)
    return fs


@pytest.fixture
def obj(s3_server, s3_bucket) -> str:
    """An object of PAYLOAD written straight to the server (not through any proxy)."""
    path = f"{s3_bucket}/obj.bin"
    s3_server.filesystem().pipe(path, PAYLOAD)
    return path


@pytest.mark.timeout(60)
def test_counts_requests_by_method_and_bytes_on_kept_alive_connections(s3_server, obj) -> None:
    with S3Proxy.in_front_of(s3_server) as proxy:
        fs = _client(proxy)
        for _ in range(3):
            assert fs.cat_file(obj) == PAYLOAD
        assert fs.cat_file(obj, start=10, end=1010) == PAYLOAD[10:1010]
        assert fs.info(obj)["size"] == len(PAYLOAD)
        stats = proxy.stats()
    assert stats.requests["GET"] == 4
    assert stats.requests["HEAD"] >= 1  # info(); s3fs may also ask for the size before a whole-object read
    assert set(stats.requests) == {"GET", "HEAD"}
    assert stats.response_body_bytes["GET"] == 3 * len(PAYLOAD) + 1000
    assert stats.response_body_bytes["HEAD"] == 0
    assert stats.request_body_bytes == 0
    assert stats.connections < stats.total_requests  # requests shared connections (keep-alive)
    assert stats.faults == {}


@pytest.mark.timeout(60)
def test_uploads_pass_and_count_their_bytes(s3_server, s3_bucket) -> None:
    with S3Proxy.in_front_of(s3_server) as proxy:
        _client(proxy).pipe(f"{s3_bucket}/up.bin", PAYLOAD)
        stats = proxy.stats()
    assert stats.requests["PUT"] == 1
    assert stats.request_body_bytes >= len(PAYLOAD)
    assert s3_server.filesystem().cat_file(f"{s3_bucket}/up.bin") == PAYLOAD


@pytest.mark.timeout(60)
def test_stats_snapshot_and_reset(s3_server, obj) -> None:
    with S3Proxy.in_front_of(s3_server) as proxy:
        fs = _client(proxy)
        fs.cat_file(obj)
        before = proxy.stats()
        fs.cat_file(obj)
        assert before.requests["GET"] == 1  # a snapshot does not move
        proxy.reset_stats()
        fs.cat_file(obj)
        assert proxy.stats().requests["GET"] == 1


@pytest.mark.timeout(60)
def test_latency_is_added_to_every_request_of_a_connection(s3_server, obj) -> None:
    delay = 0.2
    with S3Proxy.in_front_of(s3_server, latency_s=delay) as proxy:
        fs = _client(proxy)
        fs.cat_file(obj)  # connects; the timed requests below reuse the connection
        before = proxy.stats().total_requests
        start = time.perf_counter()
        for _ in range(3):
            fs.cat_file(obj)
        elapsed = time.perf_counter() - start
        stats = proxy.stats()
    assert stats.connections == 1
    assert stats.total_requests - before >= 3
    assert elapsed >= (stats.total_requests - before) * delay


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault_kwargs",
    [
        # A reused connection dropped before any answer looks stale to aiohttp, which resends the
        # request once on a new connection by itself: only a second reset reaches the caller.
        {"kind": "reset", "after_bytes": 0, "times": 2},
        {"kind": "reset", "after_bytes": 5000},  # inside the body
        {"kind": "status"},  # 503 SlowDown
        {"kind": "status", "status": 500, "code": "InternalError"},
        {"kind": "truncate", "after_bytes": 1000},
        {"kind": "stall"},
    ],
    ids=["reset-at-once", "reset-in-body", "503-slowdown", "500", "truncate", "stall"],
)
def test_each_fault_reaches_the_client_as_an_error_then_is_used_up(s3_server, obj, fault_kwargs) -> None:
    fault = Fault(**fault_kwargs)
    with S3Proxy.in_front_of(s3_server) as proxy:
        fs = _client(proxy)
        proxy.add_fault(fault)
        with pytest.raises(CLIENT_ERRORS):
            fs.cat_file(obj)
        assert fs.cat_file(obj) == PAYLOAD  # the fault is used up: the next request passes
        stats = proxy.stats()
    assert stats.faults == {fault.kind: fault.times}  # the proxy counted down its own copy
    assert stats.requests["GET"] == fault.times + 1


@pytest.mark.timeout(60)
def test_faults_match_method_and_path_and_apply_in_order(s3_server, obj, s3_bucket) -> None:
    other = f"{s3_bucket}/other.bin"
    s3_server.filesystem().pipe(other, b"x")
    with S3Proxy.in_front_of(s3_server) as proxy:
        fs = _client(proxy)
        proxy.add_fault(Fault("status", path_contains="obj.bin", times=2))  # GETs only, by default
        assert fs.cat_file(other) == b"x"
        assert proxy.stats().faults == {}
        for _ in range(2):
            with pytest.raises(OSError):
                fs.cat_file(obj)
        assert fs.cat_file(obj) == PAYLOAD
        proxy.add_fault(Fault("status", method="HEAD"))
        with pytest.raises(OSError):
            fs.info(obj)
        assert proxy.stats().faults == {"status": 3}
        proxy.add_fault(Fault("reset", path_contains="obj.bin", after_bytes=5000))
        proxy.add_fault(Fault("status"))
        with pytest.raises(aiohttp.ClientPayloadError):
            fs.cat_file(obj)  # the reset, added first
        assert proxy.stats().faults == {"status": 3, "reset": 1}


@pytest.mark.timeout(60)
def test_stop_ends_stalled_connections(s3_server, obj) -> None:
    proxy = S3Proxy.in_front_of(s3_server)
    proxy.add_fault(Fault("stall", method=None))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"GET /{obj} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)  # the proxy has read the request and holds it
        proxy.stop()
        assert sock.recv(100) == b""  # closed without an answer
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_upstream_must_be_loopback() -> None:
    with pytest.raises(ValueError, match=r"upstream host '192\.0\.2\.1' is 192\.0\.2\.1, not a loopback address"):
        S3Proxy(9000, "192.0.2.1")


def test_fault_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"fault kind 'drop' is unknown; use 'reset', 'status', 'truncate' or 'stall'"):
        Fault("drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"times must be >= 1, got 0"):
        Fault("reset", times=0)
    with pytest.raises(ValueError, match=r"status must be a 5xx code, got 404"):
        Fault("status", status=404)
