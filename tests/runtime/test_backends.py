"""The backend registry: each backend takes only the options it runs with, and refuses, in one line,
one given that it does not (`-b openvino --provider cuda` was silently ignored)."""

from __future__ import annotations

import dataclasses

import pytest

from irevnet.contract import FORWARD, Precision
from irevnet.runtime import Bundle, open_backend
from irevnet.runtime.backends import (
    BACKENDS,
    BackendOptions,
    OptionNotTaken,
    backend_class,
    options_for,
    refuse_options_not_taken,
)
from irevnet.runtime.bench import BenchOptions
from irevnet.runtime.verify import VerifyOptions


# one row per backend family: an option it does not take, and its name on the command line
@pytest.mark.parametrize("kind, option, flag", [
    ("onnxruntime", {"device": "cuda"}, "--device"),
    ("onnxruntime", {"server": "http://127.0.0.1:9"}, "--server"),
    ("openvino", {"providers": ["cuda"]}, "--provider"),
    ("openvino-bf16", {"checkpoint": "other.pt"}, "--checkpoint"),
    ("torch", {"providers": ["cpu"]}, "--provider"),
    ("tensorrt", {"threads": 2}, "--threads"),
    ("triton", {"threads": 2}, "--threads"),
], ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_each_backend_refuses_an_option_it_does_not_take(bundles, kind, option, flag):
    """Before anything is opened or imported (openvino and tensorrt need not be installed): one line
    naming the option and the backend, and the backends that do take it."""
    with pytest.raises(OptionNotTaken) as refused:
        open_backend(kind, Bundle.open(bundles[Precision.fp32]), FORWARD, **option)
    message = str(refused.value)
    assert message.startswith(f"-b {kind} does not take {flag} (an option of -b ") and "\n" not in message, message


def test_options_at_their_defaults_are_not_asked_for(bundles):
    """What the command line passes when a flag is not given (--device auto, the 60 s deadline)
    opens any backend."""
    defaults = BackendOptions(providers=[], threads=None, device="auto", server_timeout_s=60)
    assert defaults.given() == [] and defaults == BackendOptions()
    with open_backend("onnxruntime", Bundle.open(bundles[Precision.fp32]), FORWARD, defaults, threads=1) as fwd:
        assert fwd.max_batch >= 1


def test_every_option_is_some_backends_and_each_gets_its_share():
    fields = [f.name for f in dataclasses.fields(BackendOptions)]
    takers = {name: [k for k in BACKENDS if name in backend_class(k).takes] for name in fields}
    assert all(takers.values()), takers
    given = BackendOptions(providers=["cpu"], threads=2, checkpoint="c.pt", server="http://h:1", server_timeout_s=5)
    assert options_for("onnxruntime", given) == BackendOptions(providers=["cpu"], threads=2)
    assert options_for("torch", given) == BackendOptions(threads=2, checkpoint="c.pt")
    assert options_for("tensorrt", given) == BackendOptions()
    assert options_for("triton", given) == BackendOptions(server="http://h:1", server_timeout_s=5)


def test_options_for_several_backends_need_one_that_takes_each():
    """verify and bench open several backends with one set of options: each option must be taken by
    one of them, and is refused before any bundle is read otherwise."""
    BenchOptions(["b"], backends=["onnxruntime", "torch"], providers=["cpu"], checkpoint="c.pt")
    with pytest.raises(OptionNotTaken, match=r"^none of -b tensorrt, -b openvino takes --provider \(an option of "
                                             r"-b onnxruntime\)"):
        BenchOptions(["b"], backends=["tensorrt", "openvino"], providers=["cuda"])
    with pytest.raises(OptionNotTaken, match="^-b onnxruntime does not take --server-timeout-s"):
        VerifyOptions(["b"], server_timeout_s=5)
    VerifyOptions(["b"], checkpoint="c.pt")  # verify's live PyTorch reference, whichever backends run
    with pytest.raises(OptionNotTaken, match="^-b onnxruntime does not take --device"):
        refuse_options_not_taken(["onnxruntime"], BackendOptions(device="cuda"))


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_a_graph_outside_a_bundle_runs_as_the_bundles_own(bundles, kind):
    """open_graph (what the precision search judges its plans with) runs a graph's bytes as the
    bundle's backend runs the bundle's graph: the same outputs to fp32 rounding (ONNX Runtime
    optimizes a bundle's graph once per machine and these bytes in the session: the kernels may
    sum in another order), and the same checks of the feed."""
    import numpy as np

    from irevnet.contract import IMAGE, LOGITS, REFERENCE_IMAGES, Z
    from irevnet.errors import IRevNetError
    from irevnet.metrics import rel_l2
    from irevnet.runtime.backends import GRAPH_BACKENDS, InputError, open_graph

    assert kind in GRAPH_BACKENDS
    bundle = Bundle.open(bundles[Precision.fp32])
    x = bundle.reference(REFERENCE_IMAGES).images
    own = open_backend(kind, bundle, FORWARD).infer({IMAGE: x})
    graph = open_graph(kind, bundle.graph_bytes(FORWARD), [LOGITS, Z], max_batch=bundle.max_batch, origin="plan 1")
    out = graph.infer({IMAGE: x})
    assert set(out) == {LOGITS, Z}
    assert rel_l2(out[Z], own[Z]) <= 1e-6 and rel_l2(out[LOGITS], own[LOGITS]) <= 1e-6
    with pytest.raises(InputError, match="outside the exported range"):
        graph.infer({IMAGE: np.resize(x, (bundle.max_batch + 1, *x.shape[1:]))})
    with pytest.raises(IRevNetError, match="runs the graphs of a bundle"):
        open_graph("torch", bundle.graph_bytes(FORWARD), [LOGITS, Z], max_batch=bundle.max_batch)
