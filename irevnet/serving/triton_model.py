"""The model Triton's python backend runs for an irevnet repository (copied to NAME_*/1/model.py).

One graph of the bundle (config parameter `graph`) on an irevnet.runtime backend (`backend`:
onnxruntime or openvino). At load, the bundle in the repository's shared folder is checked as
`Bundle.open` checks any bundle (schema, every file's sha256): a tampered repository refuses to
load, with one line in the server's log naming the file.

Each request of a dynamic batch is checked on its own (dtype, shape, batch size, NaN/Inf, by the
backend's own rules); a bad one gets its own INVALID_ARG error (HTTP 400) and the good ones are
run together and answered. Only the outputs some request asks for are computed.

Runs inside the server's Python (the stub needs numpy < 2), with no torch: this file imports
nothing of Triton's beyond triton_python_backend_utils.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _error(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        shared = Path(args["model_repository"]).resolve().parent / params["shared"]
        if str(shared) not in sys.path:
            sys.path.insert(0, str(shared))  # the repository's own copy of irevnet's runtime
        from irevnet.errors import IRevNetError
        from irevnet.runtime import Bundle, InputError, open_backend

        self.input_error = InputError
        try:
            bundle = Bundle.open(shared / "bundle")
            threads = int(params.get("threads", "0")) or None
            self.backend = open_backend(params["backend"], bundle, params["graph"], threads=threads)
        except IRevNetError as e:  # one line in the server log; the model does not load
            raise pb_utils.TritonModelException(f"irevnet: {e}") from None
        self.input = self.backend.inputs[0]["name"]
        self.outputs = [o["name"] for o in config["output"]]

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
        step = self.backend.max_batch or len(batch)
        parts = [self.backend.infer({self.input: batch[i:i + step]}, names) for i in range(0, len(batch), step)]
        out = {name: np.concatenate([p[name] for p in parts]) for name in names}
        start = 0
        for i, x in zip(owners, feeds):
            asked = set(requests[i].requested_output_names() or self.outputs)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[name][start:start + len(x)]))
                       for name in names if name in asked]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += len(x)
        return responses

    def finalize(self) -> None:
        self.backend.close()
