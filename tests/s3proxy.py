"""A loopback HTTP/1.1 proxy in front of a test server: per-request latency, counters and faults.

Object stores charge per request: 10-50 ms before the first byte, whatever the size. moto_server
on loopback answers in about a millisecond, so a loader that issues one request per sample looks
fast against it. This proxy sits between a client (s3fs, boto3) and the server, and

- waits ``latency_s`` before the first byte of every response (per HTTP request, not per
  connection: requests on a kept-alive connection each wait);
- counts requests by method, and body bytes in each direction;
- injects faults into the next matching requests (:class:`Fault`): a connection reset after N
  bytes, an S3 error status (``503 SlowDown`` by default), a body truncated after N bytes, or a
  stall (the request is read and never answered).

The client's connections are kept alive, as s3fs/aiobotocore expect: requests and responses are
parsed (``Content-Length`` and chunked bodies, bodiless ``HEAD``/204/304 answers) rather than
piped, so each response is known to be complete before the next request is read. Each request
gets its own upstream connection, closed after the response: a connection the server may have
dropped while idle is then never reused, and loopback connects cost microseconds.

The upstream must be a loopback address (checked at construction); the proxy listens on
127.0.0.1 only. Threads are daemons and :meth:`S3Proxy.stop` (or leaving a ``with`` block)
closes every socket, so a test that forgets to stop it does not hang the interpreter.

Usage::

    with S3Proxy.in_front_of(s3_server, latency_s=0.02) as proxy:
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **proxy.storage_options)
        fs.cat_file(url)
        proxy.stats().requests["GET"]          # 1
        proxy.add_fault(Fault("status"))       # the next GET gets 503 SlowDown
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import select
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

__all__ = ["Fault", "ProxyStats", "S3Proxy"]

_HOST = "127.0.0.1"
_COPY_BYTES = 1 << 16  # bytes relayed per read while streaming a body
_MAX_LINE = 1 << 16  # a longer request or header line is not HTTP we expect
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}

FaultKind = Literal["reset", "status", "truncate", "stall"]


@dataclass
class Fault:
    """A fault for the next ``times`` requests that match ``method`` (and ``path_contains``).

    Kinds:
        ``"reset"``: forward the request, send ``after_bytes`` bytes of the response (status line
        and headers included), then reset the connection (TCP RST).
        ``"status"``: answer ``status`` with an S3 error document of code ``code`` without
        forwarding; the connection stays usable (503 SlowDown is S3's throttling answer).
        ``"truncate"``: forward, send the response head (declaring the full length) and
        ``after_bytes`` bytes of the body, then close the connection cleanly (FIN).
        ``"stall"``: read the request and never answer; the connection is held until the client
        closes it or the proxy stops.

        A reset or truncate whose ``after_bytes`` reaches past the response's end sends the whole
        response and then ends the connection the same way.

    Args:
        kind: One of the kinds above.
        times: How many matching requests get the fault, >= 1.
        method: HTTP method to match ("GET", "HEAD", ...); None matches every method.
        path_contains: Match only requests whose target contains this text; None matches all.
        after_bytes: For "reset" and "truncate": bytes sent before the cut, >= 0.
        status: For "status": the HTTP status, 500-599.
        code: For "status": the S3 error code in the body.
    """

    kind: FaultKind
    times: int = 1
    method: str | None = "GET"
    path_contains: str | None = None
    after_bytes: int = 0
    status: int = 503
    code: str = "SlowDown"

    def __post_init__(self) -> None:
        if self.kind not in ("reset", "status", "truncate", "stall"):
            raise ValueError(f"fault kind {self.kind!r} is unknown; use 'reset', 'status', 'truncate' or 'stall'")
        if self.times < 1:
            raise ValueError(f"times must be >= 1, got {self.times!r}")
        if self.after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0, got {self.after_bytes!r}")
        if not 500 <= self.status <= 599:
            raise ValueError(f"status must be a 5xx code, got {self.status!r}")

    def matches(self, method: str, target: str) -> bool:
        return (self.method is None or self.method == method) and (self.path_contains is None or self.path_contains in target)


@dataclass
class ProxyStats:
    """What passed through the proxy since it started (or since :meth:`S3Proxy.reset_stats`).

    Attributes:
        requests: Requests received, by method (faulted ones included).
        response_body_bytes: Response body bytes sent to the client, by request method.
        request_body_bytes: Request body bytes received from the client (uploads).
        connections: Client connections accepted.
        faults: Faults applied, by kind.

    :meth:`S3Proxy.stats` returns a copy: it does not change as more requests pass.
    """

    requests: Counter[str] = field(default_factory=Counter)
    response_body_bytes: Counter[str] = field(default_factory=Counter)
    request_body_bytes: int = 0
    connections: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


class _Cut(Exception):
    """A reset or truncate fault reached its byte budget: the connection ends here."""


class _Closed(Exception):
    """The peer closed the connection in the middle of a message."""


class _Message:
    """A request or response head: its first line and headers, kept as sent."""

    def __init__(self, first_line: bytes, headers: list[tuple[str, str]]) -> None:
        self.first_line, self.headers = first_line, headers

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def without(self, *names: str) -> bytes:
        """The head as bytes, leaving out the named headers."""
        drop = {n.lower() for n in names}
        lines = [self.first_line] + [f"{k}: {v}".encode("latin-1") for k, v in self.headers if k.lower() not in drop]
        return b"\r\n".join(lines) + b"\r\n\r\n"


def _read_line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(_MAX_LINE)
    if not line.endswith(b"\n"):
        raise _Closed("connection closed (or line too long) inside an HTTP head")
    return line


def _read_head(rfile: BinaryIO) -> _Message | None:
    """The next head, or None when the peer closed the connection cleanly before sending one."""
    first = rfile.readline(_MAX_LINE)
    while first in (b"\r\n", b"\n"):  # stray blank lines between messages are allowed (RFC 9112 2.2)
        first = rfile.readline(_MAX_LINE)
    if not first:
        return None
    if not first.endswith(b"\n"):
        raise _Closed("connection closed inside an HTTP head")
    headers = []
    while (line := _read_line(rfile)) not in (b"\r\n", b"\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return _Message(first.rstrip(b"\r\n"), headers)


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) != n:
        raise _Closed(f"connection closed after {len(data)} of {n} body bytes")
    return data


def _body_pieces(rfile: BinaryIO, head: _Message, bodiless: bool, request: bool = False) -> tuple[Any, bool]:
    """(an iterator of (raw bytes, payload byte count) of the body, whether it ends at close).

    A request with neither ``Content-Length`` nor chunked encoding has no body; a response
    without them runs until the server closes the connection (RFC 9112 section 6.3).
    """

    def fixed(n: int):
        while n:
            piece = _read_exact(rfile, min(n, _COPY_BYTES))
            n -= len(piece)
            yield piece, len(piece)

    def chunked():
        while True:
            size_line = _read_line(rfile)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                trailer = [size_line]
                while (line := _read_line(rfile)) not in (b"\r\n", b"\n"):
                    trailer.append(line)
                yield b"".join(trailer) + line, 0
                return
            yield size_line + _read_exact(rfile, size + 2), size

    def until_close():
        while piece := rfile.read1(_COPY_BYTES):
            yield piece, len(piece)

    if bodiless:
        return iter(()), False
    if "chunked" in (head.header("Transfer-Encoding") or "").lower():
        return chunked(), False
    length = head.header("Content-Length")
    if length is not None:
        return fixed(int(length)), False
    if request:
        return iter(()), False
    return until_close(), True


def _loopback_address(host: str) -> str:
    """``host`` resolved, once: the proxy connects to this address, so a later lookup cannot move it."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as err:
        raise ValueError(f"upstream host {host!r} does not resolve: {err}") from None
    if not address.is_loopback:
        raise ValueError(f"upstream host {host!r} is {address}, not a loopback address; the proxy only connects to loopback")
    return str(address)


class _Sender:
    """Writes to the client; with a budget, sends that many bytes in all and then raises :class:`_Cut`."""

    def __init__(self, sock: socket.socket, budget: int | None) -> None:
        self.sock, self.budget = sock, budget

    def send(self, data: bytes) -> None:
        if self.budget is not None and len(data) >= self.budget:
            self.sock.sendall(data[: self.budget])
            raise _Cut
        self.sock.sendall(data)
        if self.budget is not None:
            self.budget -= len(data)


class S3Proxy:
    """A running proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Args:
        upstream_port: The server's port.
        upstream_host: The server's host; it must resolve to a loopback address.
        latency_s: Seconds waited before the first byte of each response, >= 0. The attribute
            may be changed while the proxy runs (e.g. 0 while uploading, then the figure to test).

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>`` of the proxy.
        storage_options: With :meth:`in_front_of`: the server's fsspec options pointing at the
            proxy; otherwise None.
    """

    def __init__(self, upstream_port: int, upstream_host: str = _HOST, latency_s: float = 0.0) -> None:
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s!r}")
        self.upstream = (_loopback_address(upstream_host), upstream_port)
        self.latency_s = latency_s
        self.storage_options: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._stats = ProxyStats()
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server((_HOST, 0), backlog=128)
        self._listener.settimeout(0.1)  # the accept loop wakes to notice stop()
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = f"http://{_HOST}:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, name=f"s3proxy-{self.port}", daemon=True)
        self._thread.start()

    @classmethod
    def in_front_of(cls, server: Any, latency_s: float = 0.0) -> S3Proxy:
        """A proxy in front of an ``s3server.S3Server``, with :attr:`storage_options` set."""
        host, port = server.endpoint_url.removeprefix("http://").rsplit(":", 1)
        proxy = cls(int(port), host, latency_s)
        options = copy.deepcopy(server.storage_options)
        options.setdefault("client_kwargs", {})["endpoint_url"] = proxy.endpoint_url
        proxy.storage_options = options
        return proxy

    # -- control ---------------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order added, the first match applies.

        The proxy counts down a copy: ``fault`` itself is left as given, to be added again.
        """
        with self._lock:
            self._faults.append(dataclasses.replace(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats()

    def stop(self) -> None:
        """Stop accepting, close every connection (stalled ones too) and join the accept loop."""
        self._stopped.set()
        self._thread.join(5.0)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            except OSError:
                pass

    def __enter__(self) -> S3Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._stats.connections += 1
                self._sockets.add(client)
            threading.Thread(target=self._serve, args=(client,), name=f"s3proxy-{self.port}-conn", daemon=True).start()

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for k, fault in enumerate(self._faults):
                if fault.matches(method, target):
                    fault.times -= 1
                    if fault.times == 0:
                        del self._faults[k]
                    self._stats.faults[fault.kind] += 1
                    return fault
        return None

    def _wait_latency(self) -> None:
        if self.latency_s > 0:
            self._stopped.wait(self.latency_s)

    def _serve(self, client: socket.socket) -> None:
        rfile = client.makefile("rb")
        reset = False
        try:
            while not self._stopped.is_set():
                keep_open, reset = self._one_exchange(client, rfile)
                if not keep_open:
                    break
        except (OSError, _Closed, ValueError):
            pass  # the client went away, or sent something that is not HTTP: drop the connection
        finally:
            if reset:
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rfile.close()
            client.close()
            with self._lock:
                self._sockets.discard(client)

    def _one_exchange(self, client: socket.socket, rfile: BinaryIO) -> tuple[bool, bool]:
        """Serve one request; returns (keep the connection open, end it with a reset)."""
        request = _read_head(rfile)
        if request is None:
            return False, False
        method, target, _ = request.first_line.decode("latin-1").split(" ", 2)
        if (request.header("Expect") or "").lower() == "100-continue":
            # Answer it here (the header is not forwarded), so the client sends its body now.
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        pieces, _ = _body_pieces(rfile, request, bodiless=False, request=True)
        body = [piece for piece, _ in pieces]
        sent_bytes = sum(len(p) for p in body)
        fault = self._take_fault(method, target)
        with self._lock:
            self._stats.requests[method] += 1
            self._stats.request_body_bytes += sent_bytes
        if fault is not None and fault.kind == "stall":
            self._stall(client)
            return False, False
        if fault is not None and fault.kind == "status":
            self._answer_error(client, fault, method)
            return True, False
        try:
            keep_open = self._forward(client, request, body, method, fault)
        except _Cut:
            return False, fault is not None and fault.kind == "reset"
        close_requested = (request.header("Connection") or "").lower() == "close"
        return keep_open and not close_requested, False

    def _forward(self, client: socket.socket, request: _Message, body: list[bytes], method: str, fault: Fault | None) -> bool:
        """Relay one request upstream and its response back; returns whether the client may send another.

        Raises:
            _Cut: ``fault`` (a reset or truncate) ended the response.
        """
        with socket.create_connection(self.upstream) as upstream, upstream.makefile("rb") as ufile:
            upstream.sendall(request.without("Expect", "Connection", "Keep-Alive", "Proxy-Connection") + b"".join(body))
            response = _read_head(ufile)
            while response is not None and response.first_line.split(b" ")[1:2] in ([b"100"], [b"102"], [b"103"]):
                response = _read_head(ufile)  # interim answers: the client did not ask for them
            if response is None:
                raise _Closed("upstream closed without answering")
            status = int(response.first_line.split(b" ")[1])
            pieces, until_close = _body_pieces(ufile, response, bodiless=method == "HEAD" or status in (204, 304))
            self._wait_latency()
            # The upstream connection is ours alone and closes after this answer; the client's
            # stays open unless the body ends at close (no length tells the client where it ends).
            head = response.without("Keep-Alive") if until_close else response.without("Connection", "Keep-Alive")
            sender = _Sender(client, fault.after_bytes if fault is not None and fault.kind == "reset" else None)
            sender.send(head)
            if fault is not None and fault.kind == "truncate":
                sender.budget = fault.after_bytes
            for raw, payload in pieces:
                sender.send(raw)
                with self._lock:
                    self._stats.response_body_bytes[method] += payload
            if fault is not None:
                raise _Cut  # a budget beyond the response's end still ends the connection after it
            return not until_close

    def _answer_error(self, client: socket.socket, fault: Fault, method: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
            f"<Message>Injected by s3proxy</Message><RequestId>s3proxy</RequestId></Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._wait_latency()
        client.sendall(head if method == "HEAD" else head + body)

    def _stall(self, client: socket.socket) -> None:
        """Hold the connection, answering nothing, until the client closes it or the proxy stops."""
        while not self._stopped.is_set():
            readable, _, _ = select.select([client], [], [], 0.1)
            if readable and not client.recv(_COPY_BYTES):
                return
