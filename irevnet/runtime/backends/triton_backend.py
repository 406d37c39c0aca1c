"""A bundle's graph served by a live Triton server (`irevnet serve`, or any Triton serving a
repository of `irevnet triton`), over HTTP or gRPC: verify and bench judge and time it like a
local runtime.

The server is found by URL (triton_client.ServerAddress: `http://HOST:PORT`, `grpc://HOST:PORT`,
or `HOST:PORT` for HTTP), and treated as a stranger (triton_client): every call has a deadline
over its whole answer and a bound on its size, and every answer is checked before use. The model
is the one serving this bundle's graph: NAME_forward / NAME_inverse (or NAME_roundtrip) whose
inputs and outputs are the graph's. Whether it computes what the bundle verified is for verify
to judge (its outputs against the stored PyTorch reference).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...contract import BATCH_DIM, FORWARD, INVERSE, RECONSTRUCTION, ROUNDTRIP, TRITON_DATATYPES
from ...errors import IRevNetError
from ..bundle import Bundle
from ..manifest import Signature
from .base import Backend, BackendOptions
from .triton_client import DEFAULT_TIMEOUT_S, ServerAddress, ServerClient, TensorSpec, answer_bound, connect


class TritonBackend(Backend):
    """One graph on a Triton server: infer() is one request (the server batches)."""

    runtime_errors = ()
    takes = frozenset({"server", "server_timeout_s"})

    @classmethod
    def for_bundle(cls, bundle: Bundle, graph: str, options: BackendOptions) -> TritonBackend:
        server, server_timeout_s = options.server, options.server_timeout_s
        if server is None:
            raise IRevNetError("the triton backend needs the server's address: --server http://HOST:PORT")
        if graph not in (FORWARD, INVERSE, ROUNDTRIP):
            raise IRevNetError(f"a Triton repository of irevnet serves forward, inverse and roundtrip, not {graph}")
        return cls(bundle, graph, server, server_timeout_s)

    def __init__(self, bundle: Bundle, graph: str, server: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.address = ServerAddress.parse(server)
        spec = served_tensors(bundle, graph)
        self.inputs = [{"name": t.name, "shape": [BATCH_DIM, *t.shape[1:]], "dtype": t.dtype} for t in spec.inputs]
        self.outputs = [{"name": t.name, "shape": [BATCH_DIM, *t.shape[1:]], "dtype": t.dtype} for t in spec.outputs]
        self.specs = {t.name: TensorSpec(t.name, TRITON_DATATYPES[t.dtype], tuple(t.shape[1:])) for t in spec.outputs}
        self.max_batch = bundle.max_batch
        self.client: ServerClient = connect(self.address, timeout_s, answer_bound(list(self.specs.values()), bundle.max_batch))
        try:
            self.model = served_model(self.client, spec, graph)
        except IRevNetError:
            self.client.close()
            raise
        self.name = f"triton[{self.address.protocol} {self.address.hostport}]"
        self.origin = f"{self.address.display}: {self.model}"

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        names = outputs or [o["name"] for o in self.outputs]
        return self.client.infer(self.model, feeds, [self.specs[n] for n in names])

    def statistics(self) -> dict[str, dict[str, int]]:
        """The served model's cumulative statistics (queue, compute input / infer / output)."""
        return self.client.statistics(self.model)

    def close(self) -> None:
        self.client.close()


def served_tensors(bundle: Bundle, graph: str) -> Signature:
    """The inputs and outputs of a served model: a graph's, or the round trip's (the forward's
    input; the inverse's image as RECONSTRUCTION, then the forward's outputs)."""
    if graph != ROUNDTRIP:
        spec = bundle.graphs[graph]
        return Signature(spec.inputs, spec.outputs)
    fwd, inv = bundle.graphs[FORWARD], bundle.graphs[INVERSE]
    return Signature(fwd.inputs, (replace(inv.outputs[0], name=RECONSTRUCTION), *fwd.outputs))


def served_model(client: ServerClient, spec: Signature, graph: str) -> str:
    """The one ready model on the server whose name ends in _GRAPH and whose declared tensors
    (names, datatypes, shapes) are the graph's."""
    want = {side: sorted((t.name, TRITON_DATATYPES[t.dtype], tuple(t.shape[1:])) for t in getattr(spec, side))
            for side in ("inputs", "outputs")}
    candidates = []
    for name in sorted({name for name, _ in client.models() if name.endswith(f"_{graph}")}):
        meta = client.metadata(name)
        have = {side: sorted((t.name, t.datatype, t.shape[1:]) for t in meta[side]) for side in ("inputs", "outputs")}
        if have == want and client.model_ready(name):
            candidates.append(name)
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise IRevNetError(f"{client.address.display} serves {found} with this bundle's {graph} inputs and outputs; "
                           f"expected exactly one (serve the bundle's repository: `irevnet triton BUNDLE -o REPO && "
                           f"irevnet serve REPO`)")
    return candidates[0]
