"""A Triton server that lies, on 127.0.0.1: it speaks enough of the KServe v2 HTTP protocol to be
taken for a server of a bundle's models (listing, metadata, readiness, binary inference), and
answers one part of it the way a broken or hostile server would (`Lie`)."""

from __future__ import annotations

import json
import socket
import threading
import time
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from irevnet.runtime.manifest import GraphSpec


class Lie(str, Enum):
    none = "none"  # a correct server (zeros of the right shapes)
    trickle = "trickle"  # the inference answer, one byte every 0.2 s
    stall = "stall"  # reads the inference request, never answers
    huge = "huge"  # announces a terabyte
    huge_chunked = "huge-chunked"  # a chunk of 2**40 bytes, sent as fast as it can
    status_500 = "500"  # an internal error, with a message of two lines
    wrong_shape = "wrong-shape"
    missing_output = "missing-output"
    wrong_datatype = "wrong-datatype"
    short_bytes = "short-bytes"  # fewer bytes than the shape takes
    garbage_listing = "garbage-listing"
    garbage_metadata = "garbage-metadata"
    not_json = "not-json"


class FakeTriton:
    """Serves NAME_forward / NAME_inverse of a bundle's graphs (tensor specs as the manifest's)."""

    def __init__(self, graphs: dict[str, GraphSpec], lie: Lie, name: str = "d"):
        self.graphs, self.lie, self.name = graphs, lie, name
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.get(self)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.post(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeTriton:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answers --------------------------------------------------------------------------------

    def _send(self, h, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h, data, status: int = 200) -> None:
        self._send(h, status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def get(self, h) -> None:
        path = h.path
        if path == "/v2/health/live" or path.endswith("/ready"):
            self._send(h, 200, b"")
        elif path == "/v2/models/stats":
            if self.lie is Lie.garbage_listing:
                self._json(h, {"model_stats": "everything"})
            elif self.lie is Lie.not_json:
                self._send(h, 200, b"\x00\xffnot json")
            else:
                self._json(h, {"model_stats": [{"name": f"{self.name}_{g}", "version": "1"} for g in self.graphs]})
        elif path.startswith("/v2/models/"):
            graph = path.rsplit("/", 1)[1].removeprefix(f"{self.name}_")
            if self.lie is Lie.garbage_metadata:
                self._json(h, {"name": path, "inputs": 5, "outputs": [{"shape": "big"}]})
            else:
                spec = self.graphs[graph]
                self._json(h, {"name": f"{self.name}_{graph}", "versions": ["1"], "platform": "python",
                               **{side: [{"name": t.name, "datatype": "FP32", "shape": [-1, *t.shape[1:]]}
                                         for t in getattr(spec, side)] for side in ("inputs", "outputs")}})
        else:
            self._json(h, {"error": "not found"}, 404)

    def post(self, h, body: bytes) -> None:
        if not h.path.endswith("/infer"):
            self._json(h, {"error": "not found"}, 404)
            return
        graph = h.path.split("/")[3].removeprefix(f"{self.name}_")
        length = int(h.headers["Inference-Header-Content-Length"])
        request = json.loads(body[:length])
        batch = request["inputs"][0]["shape"][0]
        asked = [o["name"] for o in request["outputs"]]
        if self.lie is Lie.stall:
            time.sleep(3600)
        if self.lie is Lie.status_500:
            self._json(h, {"error": "the model failed\nwith a second line"}, 500)
            return
        outputs, buffers = [], []
        for t in self.graphs[graph].outputs:
            if t.name not in asked or (self.lie is Lie.missing_output and t.name == asked[-1]):
                continue
            shape = [batch, *t.shape[1:]]
            if self.lie is Lie.wrong_shape:
                shape[-1] += 1
            raw = np.zeros(shape, np.float32).tobytes()
            if self.lie is Lie.short_bytes:
                raw = raw[:-4]
            datatype = "FP64" if self.lie is Lie.wrong_datatype else "FP32"
            outputs.append({"name": t.name, "datatype": datatype, "shape": shape,
                            "parameters": {"binary_data_size": len(raw)}})
            buffers.append(raw)
        head = json.dumps({"model_name": f"{self.name}_{graph}", "outputs": outputs}).encode()
        answer = head + b"".join(buffers)
        if self.lie is Lie.huge:
            h.send_response(200)
            h.send_header("Content-Length", str(10**12))
            h.send_header("Inference-Header-Content-Length", str(len(head)))
            h.end_headers()
            self._drip(h, answer)
        elif self.lie is Lie.huge_chunked:
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.send_header("Inference-Header-Content-Length", str(len(head)))
            h.end_headers()
            h.wfile.write(b"%x\r\n" % (1 << 40))
            block = b"\0" * (1 << 20)
            try:
                while True:
                    h.wfile.write(block)
            except OSError:
                pass
        elif self.lie is Lie.trickle:
            h.send_response(200)
            h.send_header("Content-Length", str(len(answer)))
            h.send_header("Inference-Header-Content-Length", str(len(head)))
            h.end_headers()
            self._drip(h, answer)
        else:
            self._send(h, 200, answer, {"Inference-Header-Content-Length": str(len(head)),
                                        "Content-Type": "application/octet-stream"})

    def _drip(self, h, data: bytes) -> None:
        try:
            for i in range(len(data)):
                h.wfile.write(data[i:i + 1])
                h.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass


class SilentPeer:
    """Accepts TCP connections on 127.0.0.1 and never says a word (a gRPC server that never answers)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()
