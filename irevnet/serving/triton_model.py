"""The model Triton's python backend runs for an irevnet repository (copied to NAME_*/1/model.py).

NAME_forward and NAME_inverse: one graph of the bundle (config parameter `graph`) on an
irevnet.runtime backend (`backend`: onnxruntime or openvino). At load, the version's bundle in the
repository's shared folder (shared/bundles/VERSION) is checked as `Bundle.open` checks any bundle
(schema, every file's sha256): a tampered repository refuses to load, with one line in the
server's log naming the file.

Each request of a dynamic batch is checked on its own (dtype, shape, batch size, NaN/Inf, by the
backend's own rules); a bad one gets its own INVALID_ARG error (HTTP 400) and the good ones are
run together and answered. Only the outputs some request asks for are computed.

NAME_roundtrip (parameters `forward_model`, `inverse_model`) composes the two served models with
Triton's business logic scripting: image -> NAME_forward -> z -> NAME_inverse -> reconstruction,
returning what the request asks for of reconstruction, logits and z; version N calls version N of
both. It is not an `ensemble`: Triton 2.51's ensemble
scheduler fails a request for exactly one of several ensemble outputs with "unexpected deadlock,
at least one output is not set" (measured for each of the three). It needs no irevnet, so the
native flavours use it too.

Every model instance says how many requests it is executing (_Executing): `irevnet serve` drains
by it, closing idle connections once nothing is in flight.

Runs inside the server's Python (the stub needs numpy < 2), with no torch: this file imports
nothing of Triton's beyond triton_python_backend_utils, and writes no bytecode beside itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # the repository is hashed: no __pycache__ may appear in it

import numpy as np
import triton_python_backend_utils as pb_utils


def _error(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)


class _Executing:
    """How many requests this model instance is executing, in a file of the folder
    $IREVNET_EXECUTING_DIR names (`irevnet serve` sets it; its supervisor drains by it, closing
    idle connections once nothing is in flight). Elsewhere a no-op. A file, not a Triton metric:
    a custom metric's update is a message to the server, 0.25 ms per request (measured)."""

    def __init__(self, args: dict):
        folder = os.environ.get("IREVNET_EXECUTING_DIR")
        instance = re.sub(r"[^A-Za-z0-9_.-]", "_", str(args.get("model_instance_name", "instance")))[:128]
        self.fd = os.open(os.path.join(folder, instance), os.O_RDWR | os.O_CREAT, 0o600) if folder else None
        self.set(0)  # a count left by a stub that died mid-request is not this one's

    def set(self, n: int) -> None:
        if self.fd is not None:
            os.pwrite(self.fd, b"%8d" % n, 0)


class TritonPythonModel:
    """Triton's entry point: one graph of the bundle, or the round trip (the config's `graph`)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        kind = RoundTrip if "forward_model" in params else Graph
        self.executing = _Executing(args)
        self.model = kind(config, params, Path(args["model_repository"]).resolve().parent, str(args["model_version"]))

    def execute(self, requests: list) -> list:
        self.executing.set(len(requests))
        try:
            return self.model.execute(requests)
        finally:
            self.executing.set(0)

    def finalize(self) -> None:
        self.model.close()


class Graph:
    """NAME_forward or NAME_inverse: the bundle's graph on an irevnet.runtime backend."""

    def __init__(self, config: dict, params: dict[str, str], repository: Path, version: str):
        self.outputs = [o["name"] for o in config["output"]]
        shared = repository / params["shared"]
        if str(shared) not in sys.path:
            sys.path.insert(0, str(shared))  # the repository's own copy of irevnet's runtime
        from irevnet.errors import IRevNetError
        from irevnet.runtime import Bundle, InputError, open_backend

        self.input_error = InputError
        try:
            bundle = Bundle.open(shared / "bundles" / version)
            threads = int(params.get("threads", "0")) or None
            self.backend = open_backend(params["backend"], bundle, params["graph"], threads=threads)
        except IRevNetError as e:  # one line in the server log; the model does not load
            raise pb_utils.TritonModelException(f"irevnet: {e}") from None
        self.input = self.backend.inputs[0]["name"]

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        feeds, owners, wanted = [], [], set()
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input)
            if tensor is None:
                responses[i] = _error(f"missing input {self.input!r}")
                continue
            x = tensor.as_numpy()
            try:
                self.backend.check_feeds({self.input: x})
            except self.input_error as e:
                responses[i] = _error(str(e))
                continue
            feeds.append(x)
            owners.append(i)
            wanted |= set(request.requested_output_names() or self.outputs)
        if not feeds:
            return responses
        names = [name for name in self.outputs if name in wanted]
        batch = np.concatenate(feeds)
        out = self.backend.infer_in_batches({self.input: batch}, names)
        start = 0
        for i, x in zip(owners, feeds):
            asked = set(requests[i].requested_output_names() or self.outputs)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[name][start:start + len(x)]))
                       for name in names if name in asked]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += len(x)
        return responses

    def close(self) -> None:
        self.backend.close()


class RoundTrip:
    """image -> forward -> inverse, through the served models (one BLS call each)."""

    def __init__(self, config: dict, params: dict[str, str], repository: Path, version: str):
        self.outputs = [o["name"] for o in config["output"]]
        self.input = config["input"][0]["name"]
        self.forward, self.inverse = params["forward_model"], params["inverse_model"]
        self.version = int(version)

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        image = pb_utils.get_input_tensor_by_name(request, self.input)
        if image is None:
            return _error(f"missing input {self.input!r}")
        asked = set(request.requested_output_names() or self.outputs)
        recon, logits, z = self.outputs  # reconstruction, logits, z (the config's order)
        forward = pb_utils.InferenceRequest(model_name=self.forward, model_version=self.version, inputs=[image],
                                            requested_output_names=[name for name in (logits, z) if name in asked or name == z])
        got = forward.exec()
        if got.has_error():
            return _error(got.error().message())
        tensors = {name: pb_utils.get_output_tensor_by_name(got, name) for name in (logits, z)}
        if recon in asked:
            back = pb_utils.InferenceRequest(model_name=self.inverse, model_version=self.version, inputs=[tensors[z]],
                                             requested_output_names=[self.input])
            got = back.exec()
            if got.has_error():
                return _error(got.error().message())
            tensors[recon] = pb_utils.Tensor(recon, pb_utils.get_output_tensor_by_name(got, self.input).as_numpy())
        return pb_utils.InferenceResponse(output_tensors=[tensors[name] for name in self.outputs if name in asked])

    def close(self) -> None:
        pass
