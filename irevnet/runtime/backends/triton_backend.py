"""A bundle's graph served by a live Triton server (`irevnet serve`, or any Triton serving a
repository of `irevnet triton`), through tritonclient over HTTP or gRPC: verify and bench judge
and time it like a local runtime.

The server is found by URL (`http://HOST:PORT`, `grpc://HOST:PORT`, or `HOST:PORT` for HTTP); the
model is the one serving this bundle's graph: NAME_forward / NAME_inverse (or NAME_roundtrip)
whose inputs and outputs are the graph's. Whether it computes what the bundle verified is for verify to judge (its
outputs against the stored PyTorch reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...contract import BATCH_DIM, FORWARD, INVERSE, RECONSTRUCTION, ROUNDTRIP
from ...errors import IRevNetError
from ..bundle import Bundle
from .base import Backend

_TYPES = {"FP32": "float32", "FP16": "float16"}


def client_for(url: str):
    """(tritonclient module, client, protocol) for a server URL."""
    protocol, _, address = url.rpartition("://")
    protocol = protocol or "http"
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        elif protocol in ("http", "https"):
            import tritonclient.http as module
        else:
            raise IRevNetError(f"--server {url}: give http://HOST:PORT or grpc://HOST:PORT")
    except ImportError:
        raise IRevNetError("a Triton server is reached through tritonclient: pip install 'irevnet[serve]'") from None
    client = module.InferenceServerClient(address, **({"ssl": True} if protocol == "https" else {}))
    try:
        live = client.is_server_live()
    except Exception as e:  # noqa: BLE001 - connection errors of two client libraries (gevent, grpc)
        raise IRevNetError(f"no Triton server answers at {url} ({str(e).splitlines()[0][:120]}); start one with "
                           f"`irevnet serve REPO`, or check the address") from None
    if not live:
        raise IRevNetError(f"the Triton server at {url} is not live")
    return module, client, protocol


class TritonBackend(Backend):
    """One graph on a Triton server: infer() is one request (the server batches)."""

    runtime_errors = ()

    @classmethod
    def for_bundle(cls, bundle: Bundle, graph: str, *, server: str | None = None, **_: Any) -> TritonBackend:
        if server is None:
            raise IRevNetError("the triton backend needs the server's address: --server http://HOST:PORT")
        if graph not in (FORWARD, INVERSE, ROUNDTRIP):
            raise IRevNetError(f"a Triton repository of irevnet serves forward, inverse and roundtrip, not {graph}")
        return cls(bundle, graph, server)

    def __init__(self, bundle: Bundle, graph: str, server: str):
        self.module, self.client, protocol = client_for(server)
        self.model = _served_model(self.client, bundle, graph, server, protocol)
        self.name = f"triton[{protocol} {server.rpartition('://')[2]}]"
        self.kind = "triton"
        self.origin = f"{server}: {self.model}"
        spec = served_tensors(bundle, graph)
        self.inputs = [{"name": t["name"], "shape": [BATCH_DIM, *t["shape"][1:]], "dtype": t["dtype"]} for t in spec["inputs"]]
        self.outputs = [{"name": t["name"], "shape": [BATCH_DIM, *t["shape"][1:]], "dtype": t["dtype"]} for t in spec["outputs"]]
        self.max_batch = bundle.max_batch

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in feeds.items():
            tensor = self.module.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        names = outputs or [o["name"] for o in self.outputs]
        try:
            result = self.client.infer(self.model, inputs, outputs=[self.module.InferRequestedOutput(n) for n in names])
        except Exception as e:  # noqa: BLE001 - tritonclient's InferenceServerException, connection errors
            raise IRevNetError(f"{self.origin}: the server answered {str(e).splitlines()[0][:200]}") from None
        return {n: result.as_numpy(n) for n in names}

    def close(self) -> None:
        self.client.close()


def served_tensors(bundle: Bundle, graph: str) -> dict[str, list[dict[str, Any]]]:
    """The inputs and outputs of a served model: a graph's, or the round trip's (the forward's
    input; the inverse's image as RECONSTRUCTION, then the forward's outputs)."""
    if graph != ROUNDTRIP:
        return bundle.graphs[graph]
    fwd, inv = bundle.graphs[FORWARD], bundle.graphs[INVERSE]
    return {"inputs": fwd["inputs"], "outputs": [{**inv["outputs"][0], "name": RECONSTRUCTION}, *fwd["outputs"]]}


def _served_model(client, bundle: Bundle, graph: str, server: str, protocol: str) -> str:
    """The model on the server whose name ends in _GRAPH and whose tensors are the graph's."""
    try:
        index = client.get_model_repository_index()
    except Exception as e:  # noqa: BLE001
        raise IRevNetError(f"{server}: cannot list its models ({str(e)[:120]})") from None
    entries = index if isinstance(index, list) else [{"name": m.name, "state": m.state} for m in index.models]
    spec = served_tensors(bundle, graph)
    want = {(t["name"], tuple(t["shape"][1:])) for t in spec["inputs"] + spec["outputs"]}
    candidates = []
    for entry in entries:
        if not entry["name"].endswith(f"_{graph}") or entry.get("state") != "READY":
            continue
        meta = client.get_model_metadata(entry["name"])
        if protocol != "grpc":
            tensors = meta["inputs"] + meta["outputs"]
            have = {(t["name"], tuple(int(d) for d in t["shape"][1:])) for t in tensors}
        else:
            have = {(t.name, tuple(int(d) for d in t.shape[1:])) for t in [*meta.inputs, *meta.outputs]}
        if have == want:
            candidates.append(entry["name"])
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise IRevNetError(f"{server} serves {found} with this bundle's {graph} inputs and outputs; expected exactly one "
                           f"(serve the bundle's repository: `irevnet triton BUNDLE -o REPO && irevnet serve REPO`)")
    return candidates[0]
