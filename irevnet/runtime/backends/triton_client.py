"""Talking to a Triton server as to a stranger: every call has a deadline over its whole answer and
a bound on the bytes it will take, and every field of an answer is checked before it is used.

tritonclient bounds neither: its HTTP client times out per socket operation (a server sending a
byte a second never times out) and reads whatever size is announced, and its gRPC calls have no
deadline unless given one. So:
- HTTP speaks the KServe v2 protocol with its binary tensor extension over http.client, one kept
  alive connection per client; a watchdog shuts the socket down at the deadline, so a server that
  trickles, stalls or never answers ends the call on time; the body is read up to a bound taken
  from the model's declared outputs, and parsed here (names, datatypes, shapes, byte counts).
- gRPC is tritonclient.grpc with a deadline on every call and max_receive_message_length set from
  the same bound, its answers checked the same way.

Addresses are parsed strictly (ServerAddress): an empty or unparsable URL, a port outside
1-65535 or an unknown scheme is a one-line error; credentials in a URL are sent (HTTP basic
authentication, for a proxy in front of the server) and never shown.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import itertools
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...contract import TRITON_DATATYPES
from ...errors import IRevNetError

DEFAULT_TIMEOUT_S = 60.0
CONTROL_LIMIT = 4 << 20  # bytes of a listing, metadata or statistics answer
_HEADER_ALLOWANCE = 64 << 10  # an inference answer's JSON header, beyond its tensors
_SCHEMES = {"http": 8000, "https": 443, "grpc": 8001, "grpcs": 443}
_MODEL = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
_HOST = re.compile(r"^[A-Za-z0-9._-]{1,253}$")  # '_' too: compose and Kubernetes service names resolve


@dataclass(frozen=True)
class ServerAddress:
    """A server URL: http(s)://HOST:PORT or grpc(s)://HOST:PORT (HOST:PORT alone is HTTP)."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str | None) -> ServerAddress:
        if url is None or not url.strip():
            raise IRevNetError("--server is empty; give http://HOST:PORT or grpc://HOST:PORT (an unset variable?)")
        shown = _redacted(url)
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise IRevNetError(f"--server {shown!r} holds spaces or control characters; give http://HOST:PORT")
        try:
            parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        except ValueError as e:
            raise IRevNetError(f"--server {shown!r} does not parse as a URL ({e}); give http://HOST:PORT") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise IRevNetError(f"--server {shown!r}: unknown scheme {scheme[:20]!r}; give http://, https://, grpc:// or "
                               f"grpcs://")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise IRevNetError(f"--server {shown!r}: a server address has no path, query or fragment; give "
                               f"{scheme}://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            raise IRevNetError(f"--server {shown!r}: the port must be a number from 1 to 65535") from None
        host = parts.hostname or ""
        if not host or not (_HOST.match(host) or _ipv6(host)):
            raise IRevNetError(f"--server {shown!r} names no host; give {scheme}://HOST:PORT")
        if port == 0:
            raise IRevNetError(f"--server {shown!r}: the port must be a number from 1 to 65535")
        unquote = urllib.parse.unquote
        return cls(scheme, host, port or _SCHEMES[scheme], unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    @property
    def protocol(self) -> str:
        return "grpc" if self.scheme.startswith("grpc") else "http"

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "grpcs")

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def display(self) -> str:
        """The address as it may be shown: credentials never are."""
        return f"{self.scheme}://{'***@' if self.username or self.password else ''}{self.hostport}"

    def auth_headers(self) -> dict[str, str]:
        if self.username is None and self.password is None:
            return {}
        token = base64.b64encode(f"{self.username or ''}:{self.password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


def _ipv6(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _redacted(url: str) -> str:
    """The URL as typed, at most 120 characters, with everything between its scheme and its last
    '@' replaced by ***: whatever may be credentials (a password may hold '/', '@' or '#')."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"[:120]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton's: FP32, FP16
    shape: tuple[int, ...]  # without the batch axis


def answer_bound(outputs: list[TensorSpec], max_batch: int) -> int:
    """The most bytes an inference answer of these outputs may take: every output at the largest
    batch, and a header."""
    per_image = sum(int(np.prod(t.shape)) * _ITEMSIZE[t.datatype] for t in outputs)
    return per_image * max_batch + _HEADER_ALLOWANCE


_NUMPY = {name: np.dtype(dtype).newbyteorder("<") for dtype, name in TRITON_DATATYPES.items()}
_ITEMSIZE = {name: dtype.itemsize for name, dtype in _NUMPY.items()}
_DIGITS = re.compile(r"[0-9]{1,19}")  # an ASCII count (str.isdigit takes '²', which int() refuses)


class ServerClient:
    """What verify and bench need of a server, over HTTP or gRPC (connect() picks)."""

    address: ServerAddress

    def models(self) -> list[tuple[str, str]]:
        """(name, version) of every model the server says it has loaded (from its statistics,
        else its repository index, for servers that restrict statistics)."""
        raise NotImplementedError

    def model_ready(self, model: str) -> bool:
        raise NotImplementedError

    def metadata(self, model: str) -> dict[str, list[TensorSpec]]:
        """The model's inputs and outputs as the server declares them (shapes with the batch axis)."""
        raise NotImplementedError

    def infer(self, model: str, feeds: dict[str, np.ndarray], outputs: list[TensorSpec],
              version: str = "") -> dict[str, np.ndarray]:
        """Runs one request (on `version`, default: the server's choice, the highest); every output
        checked against `outputs` at the feeds' batch size."""
        raise NotImplementedError

    def statistics(self, model: str) -> dict[str, dict[str, int]]:
        """The model's cumulative inference statistics: {success, fail, queue, compute_input,
        compute_infer, compute_output} -> {count, ns}."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _fail(self, what: str, problem: str) -> IRevNetError:
        return IRevNetError(f"{self.address.display}: {what}: {problem}")


def connect(address: ServerAddress, timeout_s: float = DEFAULT_TIMEOUT_S, bound: int = CONTROL_LIMIT) -> ServerClient:
    """A client for the server at `address` that has answered that it is live.

    Args:
        timeout_s: the deadline of every call, over its whole answer.
        bound: the most bytes an inference answer may take (answer_bound).
    """
    client = GrpcClient(address, timeout_s, bound) if address.protocol == "grpc" else HttpClient(address, timeout_s, bound)
    try:
        live = client.live()
    except IRevNetError as e:
        client.close()
        raise IRevNetError(f"no Triton server answers at {address.display} ({str(e).split(': ', 1)[-1][:160]}); start "
                           f"one with `irevnet serve REPO`, or check the address") from None
    if not live:
        client.close()
        status = getattr(client, "live_status", None)
        raise IRevNetError(f"the Triton server at {address.display} says it is not live"
                           f"{f' (HTTP {status} to /v2/health/live)' if status else ''}")
    return client


# -- HTTP ---------------------------------------------------------------------------------------------


class _Watchdog:
    """One thread that shuts down the socket of any call past its deadline (a blocked read then
    returns at once), shared by every HTTP client of the process."""

    def __init__(self):
        self.lock = threading.Condition()
        self.heap: list[tuple[float, int]] = []
        self.armed: dict[int, socket.socket] = {}
        self.fired: set[int] = set()
        self.ids = itertools.count()
        self.thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, deadline: float) -> int:
        with self.lock:
            token = next(self.ids)
            self.armed[token] = sock
            heapq.heappush(self.heap, (deadline, token))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True, name="irevnet-triton-deadlines")
                self.thread.start()
            self.lock.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Returns True when the deadline had already fired."""
        with self.lock:
            self.armed.pop(token, None)
            if token in self.fired:
                self.fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self.lock:
            while True:
                while self.heap and self.heap[0][1] not in self.armed:
                    heapq.heappop(self.heap)
                if not self.heap:
                    self.lock.wait()
                    continue
                deadline, token = self.heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                heapq.heappop(self.heap)
                sock = self.armed.pop(token)
                self.fired.add(token)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_WATCHDOG = _Watchdog()


class HttpClient(ServerClient):
    def __init__(self, address: ServerAddress, timeout_s: float, bound: int):
        self.address, self.timeout_s, self.bound = address, timeout_s, bound
        self.connection: http.client.HTTPConnection | None = None
        self.headers = {"Host": address.hostport, **address.auth_headers()}

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        """The kept-alive connection, or a new one made within the deadline: the name resolved in
        a thread that is not waited on past it, each socket armed before it connects, the TLS
        handshake armed too."""
        if self.connection is not None:
            return self.connection
        failure: OSError | None = None
        for family, kind, proto, _, addr in _resolve(self.address.host, self.address.port, deadline):
            sock = socket.socket(family, kind, proto)
            token = _WATCHDOG.arm(sock, deadline)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.connect(addr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.address.tls:
                    _WATCHDOG.disarm(token)
                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.address.host,
                                                                    do_handshake_on_connect=False)
                    token = _WATCHDOG.arm(sock, deadline)
                    sock.do_handshake()
            except OSError as e:
                failure = e
                sock.close()
                if _WATCHDOG.disarm(token):
                    raise TimeoutError from None
                continue
            if _WATCHDOG.disarm(token):
                sock.close()
                raise TimeoutError
            conn = http.client.HTTPConnection(self.address.host, self.address.port)
            conn.sock = sock  # http.client writes to a connection's socket when it has one
            self.connection = conn
            return conn
        raise failure or OSError(f"{self.address.host} resolves to no address")

    def request(self, what: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, limit: int = CONTROL_LIMIT) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one call, whole within the deadline and at most `limit` bytes.
        A kept-alive connection the server closed while idle is opened again once."""
        deadline = time.monotonic() + self.timeout_s  # once: a retry shares it
        for attempt in (0, 1):
            token = None
            try:
                conn = self._connect(deadline)
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                token = _WATCHDOG.arm(conn.sock, deadline)
                conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
                response = conn.getresponse()
                length = response.getheader("Content-Length")
                if length is not None and not _DIGITS.fullmatch(length.strip()):
                    raise _Malformed(f"Content-Length {length[:40]!r}")
                if length is not None and int(length) > limit:
                    raise _TooLarge(length)
                if response.getheader("Content-Encoding", "identity").lower() != "identity":
                    raise _Malformed(f"an encoded body ({response.getheader('Content-Encoding')[:40]}), which was not asked for")
                data = response.read(limit + 1)
                if len(data) > limit:
                    raise _TooLarge(f"over {limit}")
                fired = _WATCHDOG.disarm(token)
                token = None
                if fired:
                    raise TimeoutError
                if response.will_close:
                    self._drop()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except _TooLarge as e:
                self._drop()
                raise self._fail(what, f"the answer announces {e.args[0]} bytes, more than the {limit} it can take "
                                       f"(from the model's declared outputs)") from None
            except _Malformed as e:
                self._drop()
                raise self._fail(what, f"malformed answer: {e.args[0]}") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                fired = token is not None and _WATCHDOG.disarm(token)
                token = None
                self._drop()
                if fired or isinstance(e, TimeoutError):
                    raise self._fail(what, f"no complete answer within {self.timeout_s:g} s") from None
                idle_close = isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError))
                if attempt == 0 and idle_close:
                    continue
                raise self._fail(what, f"the connection failed ({_short(e)})") from None
            finally:
                if token is not None:
                    _WATCHDOG.disarm(token)
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _json(self, what: str, method: str, path: str, body: bytes | None = None) -> Any:
        status, _, data = self.request(what, method, path, body)
        if status != 200:
            raise self._fail(what, f"HTTP {status}: {_error_of(data)}")
        return _parse_json(data, lambda problem: self._fail(what, problem))

    def live(self) -> bool:
        status, _, _ = self.request("health", "GET", "/v2/health/live", limit=64 << 10)
        self.live_status = status
        return status == 200

    def models(self) -> list[tuple[str, str]]:
        status, _, data = self.request("the model listing", "GET", "/v2/models/stats")
        if status == 200:
            stats = _parse_json(data, lambda p: self._fail("the model listing", p))
            entries = stats.get("model_stats") if isinstance(stats, dict) else None
        else:  # statistics restricted here: the repository index
            entries = self._json("the model listing", "POST", "/v2/repository/index", b"{}")
            entries = [e for e in entries if isinstance(e, dict) and e.get("state") == "READY"] if isinstance(
                entries, list) else None
        return _model_list(entries, lambda p: self._fail("the model listing", p))

    def model_ready(self, model: str) -> bool:
        status, _, _ = self.request(f"{model} readiness", "GET", f"/v2/models/{_path(model)}/ready", limit=64 << 10)
        return status == 200

    def metadata(self, model: str) -> dict[str, list[TensorSpec]]:
        meta = self._json(f"{model} metadata", "GET", f"/v2/models/{_path(model)}")
        return _metadata(meta, lambda p: self._fail(f"{model} metadata", p))

    def statistics(self, model: str) -> dict[str, dict[str, int]]:
        stats = self._json(f"{model} statistics", "GET", f"/v2/models/{_path(model)}/stats")
        entries = stats.get("model_stats") if isinstance(stats, dict) else None
        return _statistics(entries, model, lambda p: self._fail(f"{model} statistics", p))

    def infer(self, model: str, feeds: dict[str, np.ndarray], outputs: list[TensorSpec],
              version: str = "") -> dict[str, np.ndarray]:
        what = f"{model} inference"
        header = {
            "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}} for name, x in feeds.items()],
            "outputs": [{"name": t.name, "parameters": {"binary_data": True}} for t in outputs],
        }
        head = json.dumps(header).encode()
        body = b"".join([head, *(np.ascontiguousarray(x, dtype="<f4").tobytes() for x in feeds.values())])
        versioned = f"/versions/{_path(version)}" if version else ""
        status, headers, data = self.request(what, "POST", f"/v2/models/{_path(model)}{versioned}/infer", body,
                                             {"Inference-Header-Content-Length": str(len(head)),
                                              "Content-Type": "application/octet-stream"}, limit=self.bound)
        if status != 200:
            raise self._fail(what, f"HTTP {status}: {_error_of(data)}")
        batch = next(iter(feeds.values())).shape[0]
        return _http_outputs(data, headers.get("inference-header-content-length"), outputs, batch,
                             lambda p: self._fail(what, p))

    def close(self) -> None:
        self._drop()


def _resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """getaddrinfo within the deadline (it has no timeout of its own: a thread that is left
    behind if the resolver stalls); an address literal needs no lookup."""
    import ipaddress

    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    found: list = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    thread = threading.Thread(target=lookup, daemon=True, name="irevnet-resolve")
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    if thread.is_alive():
        raise TimeoutError
    if found and isinstance(found[0], OSError):
        raise found[0]
    return found


class _TooLarge(Exception):
    pass


class _Malformed(Exception):
    pass


def _path(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text and text[0] else type(e).__name__)[:160]


def _parse_json(data: bytes, fail) -> Any:
    """Strict JSON: NaN and Infinity, which Python's parser takes by default, are refused."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise fail(f"not JSON ({data[:60]!r})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error_of(data: bytes) -> str:
    """The error a server sent, one line of at most 200 characters."""
    try:
        message = json.loads(data).get("error")
    except (ValueError, AttributeError, RecursionError):
        message = None
    text = message if isinstance(message, str) else data[:200].decode("utf-8", "replace")
    return " ".join(text.split())[:200] or "no message"


def _http_outputs(data: bytes, header_length: str | None, outputs: list[TensorSpec], batch: int, fail) -> dict[str, np.ndarray]:
    """The requested outputs of a binary-extension answer, each checked: present once, the
    declared datatype, the shape (batch, *dims), and exactly the bytes that shape takes."""
    if header_length is None or not _DIGITS.fullmatch(header_length) or not 0 < int(header_length) <= len(data):
        raise fail(f"malformed answer: Inference-Header-Content-Length {str(header_length)[:20]!r} for a body of "
                   f"{len(data)} bytes")
    size = int(header_length)
    header = _parse_json(data[:size], lambda p: fail(f"malformed answer: its header is {p}"))
    entries = header.get("outputs") if isinstance(header, dict) else None
    if not isinstance(entries, list):
        raise fail("malformed answer: no outputs")
    offset, arrays = size, {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise fail("malformed answer: an output that is not an object")
        name, params = entry.get("name"), entry.get("parameters")
        length = params.get("binary_data_size") if isinstance(params, dict) else None
        if not isinstance(length, int) or isinstance(length, bool) or length < 0 or offset + length > len(data):
            raise fail(f"malformed answer: output {str(name)[:40]!r} has no binary data within the body")
        spec = next((t for t in outputs if t.name == name), None)
        if spec is not None:
            if name in arrays:
                raise fail(f"malformed answer: output {name!r} twice")
            arrays[name] = _checked(spec, entry.get("datatype"), entry.get("shape"), data[offset:offset + length], batch,
                                    fail)
        offset += length
    if offset != len(data):
        raise fail(f"malformed answer: {len(data) - offset} bytes after the last output")
    missing = [t.name for t in outputs if t.name not in arrays]
    if missing:
        raise fail(f"the answer lacks output {missing[0]!r}")
    return arrays


def _checked(spec: TensorSpec, datatype: Any, shape: Any, raw: bytes, batch: int, fail) -> np.ndarray:
    expected = [batch, *spec.shape]
    if datatype != spec.datatype:
        raise fail(f"output {spec.name!r} is {str(datatype)[:20]}, the model declares {spec.datatype}")
    if not isinstance(shape, (list, tuple)) or [int(d) if isinstance(d, int) and not isinstance(d, bool) else None
                                                for d in shape] != expected:
        raise fail(f"output {spec.name!r} has shape {str(shape)[:60]}, expected {expected}")
    if len(raw) != int(np.prod(expected)) * _ITEMSIZE[spec.datatype]:
        raise fail(f"output {spec.name!r} carries {len(raw)} bytes for shape {expected}")
    return np.frombuffer(raw, dtype=_NUMPY[spec.datatype]).reshape(expected)


def _model_list(entries: Any, fail) -> list[tuple[str, str]]:
    if not isinstance(entries, list):
        raise fail("malformed answer: not a list of models")
    models = []
    for entry in entries[:10_000]:
        name = entry.get("name") if isinstance(entry, dict) else None
        version = entry.get("version", "") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(version, str):
            raise fail("malformed answer: a model without a name")
        if _MODEL.match(name):  # a name irevnet would never give is not one of its models
            models.append((name, version))
    return models


def _metadata(meta: Any, fail) -> dict[str, list[TensorSpec]]:
    if not isinstance(meta, dict):
        raise fail("malformed answer: not an object")
    found = {}
    for side in ("inputs", "outputs"):
        tensors = meta.get(side)
        if not isinstance(tensors, list) or len(tensors) > 1000:
            raise fail(f"malformed answer: no {side}")
        specs = []
        for t in tensors:
            shape = t.get("shape") if isinstance(t, dict) else None
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("datatype"), str)
                    and isinstance(shape, list) and 1 <= len(shape) <= 8
                    and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)):
                raise fail(f"malformed answer: a tensor of {side} without a name, datatype or shape")
            specs.append(TensorSpec(t["name"], t["datatype"], tuple(shape)))
        found[side] = specs
    return found


_STAT_KEYS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _statistics(entries: Any, model: str, fail) -> dict[str, dict[str, int]]:
    if not isinstance(entries, list):
        raise fail("malformed answer: no model_stats")
    # the highest version's (a request without a version runs there)
    versions = [e for e in entries if isinstance(e, dict) and e.get("name") == model]
    if not versions:
        raise fail(f"no statistics for {model}")
    entry = max(versions, key=lambda e: int(e["version"]) if _DIGITS.fullmatch(str(e.get("version", ""))) else -1)
    stats = entry.get("inference_stats")
    out = {}
    for key in _STAT_KEYS:
        value = stats.get(key) if isinstance(stats, dict) else None
        count = value.get("count", 0) if isinstance(value, dict) else None
        ns = value.get("ns", 0) if isinstance(value, dict) else None
        # the protobuf's JSON writes 64-bit integers as strings
        count, ns = (v if isinstance(v, int) and not isinstance(v, bool) else
                     int(v) if isinstance(v, str) and _DIGITS.fullmatch(v) else None for v in (count, ns))
        if count is None or ns is None or count < 0 or ns < 0:
            raise fail(f"malformed answer: inference_stats.{key} is not a count")
        out[key] = {"count": count, "ns": ns}
    return out


# -- gRPC ---------------------------------------------------------------------------------------------


class GrpcClient(ServerClient):
    def __init__(self, address: ServerAddress, timeout_s: float, bound: int):
        try:
            import tritonclient.grpc as module
        except ImportError:
            raise IRevNetError("a Triton server is reached over gRPC through tritonclient: pip install "
                               "'irevnet[serve]'") from None
        self.module, self.address, self.timeout_s, self.bound = module, address, timeout_s, bound
        self.headers = {k.lower(): v for k, v in address.auth_headers().items()} or None
        self.client = module.InferenceServerClient(
            address.hostport, ssl=address.tls,
            channel_args=[("grpc.max_receive_message_length", max(bound, CONTROL_LIMIT)),
                          ("grpc.max_send_message_length", 1 << 30),
                          ("grpc.enable_retries", 0)])

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, headers=self.headers, client_timeout=self.timeout_s, **kwargs)
        except self.module.InferenceServerException as e:
            status = str(e.status() or "")
            message = " ".join(str(e.message() or e).split())[:200]
            if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
                raise self._fail(what, f"no complete answer within {self.timeout_s:g} s") from None
            if "RESOURCE_EXHAUSTED" in status or "larger than max" in message:
                raise self._fail(what, f"the answer is larger than the {self.bound} bytes it can take (from the model's "
                                       f"declared outputs)") from None
            raise self._fail(what, f"{status or 'error'}: {message}") from None
        except Exception as e:  # noqa: BLE001 - grpc's own errors for a peer that is not a Triton server
            raise self._fail(what, f"the call failed ({_short(e)})") from None

    def live(self) -> bool:
        return bool(self._call("health", self.client.is_server_live))

    def models(self) -> list[tuple[str, str]]:
        try:
            stats = self._call("the model listing", self.client.get_inference_statistics, as_json=True)
            entries = stats.get("model_stats", []) if isinstance(stats, dict) else None
        except IRevNetError:
            index = self._call("the model listing", self.client.get_model_repository_index, as_json=True)
            models = index.get("models", []) if isinstance(index, dict) else None
            entries = [m for m in models if isinstance(m, dict) and m.get("state") == "READY"] if isinstance(
                models, list) else None
        return _model_list(entries, lambda p: self._fail("the model listing", p))

    def model_ready(self, model: str) -> bool:
        return bool(self._call(f"{model} readiness", self.client.is_model_ready, model))

    def metadata(self, model: str) -> dict[str, list[TensorSpec]]:
        meta = self._call(f"{model} metadata", self.client.get_model_metadata, model, as_json=True)
        if isinstance(meta, dict):  # the protobuf's JSON gives dims as strings
            for side in ("inputs", "outputs"):
                for t in meta.get(side, []) if isinstance(meta.get(side), list) else []:
                    if isinstance(t, dict) and isinstance(t.get("shape"), list):
                        t["shape"] = [int(d) if isinstance(d, str) and re.fullmatch(r"-?\d{1,12}", d) else d
                                      for d in t["shape"]]
        return _metadata(meta, lambda p: self._fail(f"{model} metadata", p))

    def statistics(self, model: str) -> dict[str, dict[str, int]]:
        stats = self._call(f"{model} statistics", self.client.get_inference_statistics, model, as_json=True)
        entries = stats.get("model_stats") if isinstance(stats, dict) else None
        return _statistics(entries, model, lambda p: self._fail(f"{model} statistics", p))

    def infer(self, model: str, feeds: dict[str, np.ndarray], outputs: list[TensorSpec],
              version: str = "") -> dict[str, np.ndarray]:
        what = f"{model} inference"
        inputs = []
        for name, x in feeds.items():
            tensor = self.module.InferInput(name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            inputs.append(tensor)
        asked = [self.module.InferRequestedOutput(t.name) for t in outputs]
        result = self._call(what, self.client.infer, model, inputs, outputs=asked, model_version=version)
        response = result.get_response()
        batch = next(iter(feeds.values())).shape[0]
        fail = lambda p: self._fail(what, p)
        if len(response.raw_output_contents) != len(response.outputs):
            raise fail(f"malformed answer: {len(response.outputs)} outputs with {len(response.raw_output_contents)} "
                       f"buffers")
        arrays = {}
        for entry, raw in zip(response.outputs, response.raw_output_contents):
            spec = next((t for t in outputs if t.name == entry.name), None)
            if spec is None:
                continue
            if entry.name in arrays:
                raise fail(f"malformed answer: output {entry.name!r} twice")
            arrays[entry.name] = _checked(spec, entry.datatype, [int(d) for d in entry.shape], raw, batch, fail)
        missing = [t.name for t in outputs if t.name not in arrays]
        if missing:
            raise fail(f"the answer lacks output {missing[0]!r}")
        return arrays

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001, S110 - closing a channel that already failed
            pass
