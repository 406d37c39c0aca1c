"""`--server` means a server, treated as a stranger: an address that does not parse is one line;
every call ends within its deadline whatever the server does; no answer is taken beyond the size
the model's outputs declare; every malformed answer is one line naming the model and what was
wrong. The servers here are fakes on 127.0.0.1 (fake_triton.py) that lie in one way each."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import FORWARD, INVERSE, Precision
from irevnet.runtime import Bundle

from .fake_triton import FakeTriton, Lie, SilentPeer

TIMEOUT_S = 1.0


def _verify(bundle, server: str, *extra: str):
    start = time.monotonic()
    result = CliRunner().invoke(app, ["verify", str(bundle), "--server", server, "--server-timeout-s", str(TIMEOUT_S),
                                      "--no-blocks", *extra])
    return result, time.monotonic() - start


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: "), result.output
    return lines[-1]


LIES = {
    Lie.trickle: "d_forward inference: no complete answer within 1 s",
    Lie.stall: "d_forward inference: no complete answer within 1 s",
    Lie.huge: "the answer announces 1000000000000 bytes, more than the",
    Lie.huge_chunked: "more than the",
    Lie.status_500: "d_forward inference: HTTP 500: the model failed with a second line",
    Lie.wrong_shape: "has shape [8, 11], expected [8, 10]",
    Lie.missing_output: "the answer lacks output 'z'",
    Lie.wrong_datatype: "is FP64, the model declares FP32",
    Lie.short_bytes: "output 'logits' carries 316 bytes for shape [8, 10]",
    Lie.garbage_listing: "the model listing: malformed answer: not a list of models",
    Lie.garbage_metadata: "d_forward metadata: malformed answer",
    Lie.not_json: "the model listing: not JSON",
}


@pytest.mark.parametrize("lie", LIES, ids=[lie.value for lie in LIES])
def test_a_lying_server_is_one_line_within_the_deadline(bundles, lie):
    """verify hung against a server that answered slowly enough, buffered an answer of any
    announced size, and ended in a traceback for wrong shapes, missing outputs, garbage listings
    and metadata, and HTTP 500s."""
    bundle = Bundle.open(bundles[Precision.fp32])
    graphs = {g: bundle.graphs[g] for g in (FORWARD, INVERSE)}
    with FakeTriton(graphs, lie) as fake:
        result, seconds = _verify(bundles[Precision.fp32], fake.url)
    line = _one_line_error(result)
    assert LIES[lie] in line and fake.url in line, line
    # one call's deadline of 1 s and a few fast calls: 30 s leaves a loaded machine room; a hang is hours
    assert seconds < 30, f"{seconds:.1f} s"


def test_a_correct_fake_passes_so_the_lies_are_what_fails(bundles):
    """The fake answers zeros: verify runs every check against it, and fails them (exit 1),
    instead of refusing it (exit 2) as it refuses the lies above."""
    bundle = Bundle.open(bundles[Precision.fp32])
    with FakeTriton({g: bundle.graphs[g] for g in (FORWARD, INVERSE)}, Lie.none) as fake:
        result, _ = _verify(bundles[Precision.fp32], fake.url)
    assert result.exit_code == 1 and "verify failed" in result.output, result.output


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_server_that_never_answers_is_one_line_within_the_deadline(bundles, scheme):
    """Over gRPC inference had no deadline at all: a peer that accepts and never answers hung."""
    peer = SilentPeer()
    try:
        result, seconds = _verify(bundles[Precision.fp32], f"{scheme}://127.0.0.1:{peer.port}")
    finally:
        peer.close()
    line = _one_line_error(result)
    assert f"no Triton server answers at {scheme}://127.0.0.1:{peer.port}" in line, line
    assert seconds < 30, f"{seconds:.1f} s: the 1 s deadline of the first call ends it"


BAD_URLS = {
    "": "--server is empty",
    "   ": "--server is empty",
    "http://": "names no host",
    "http://127.0.0.1:99999": "the port must be a number from 1 to 65535",
    "http://127.0.0.1:0": "the port must be a number from 1 to 65535",
    "http://127.0.0.1:http": "the port must be a number from 1 to 65535",
    "ftp://127.0.0.1:21": "unknown scheme 'ftp'",
    "127.0.0.1:8000/v2/models": "has no path, query or fragment",
    "http://127.0.0.1:8000?x=1": "has no path, query or fragment",
    "grpc://[::1:8001": "does not parse as a URL (Invalid IPv6 URL)",
    "http://exa mple:80": "holds spaces or control characters",
    "http://user:hunter2@127.0.0.1:99999": "the port must be a number from 1 to 65535",
    "user:hunter2@127.0.0.1:99999": "the port must be a number from 1 to 65535",  # no scheme
    "http://user:hun/ter2@127.0.0.1:8000": "has no path",  # a '/' in the password
    "http://user:hunter2@x@127.0.0.1:99999": "the port must be a number from 1 to 65535",  # an '@' in it
}


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_address_that_does_not_parse_is_one_line_and_exit_2(bundles, url):
    """`--server ""` (an unset variable in a script) printed "verify passed" on the in-process
    runtime; other addresses ended in tracebacks or were taken for another one."""
    for command in (["verify", str(bundles[Precision.fp32]), "--no-blocks"], ["bench", str(bundles[Precision.fp32])]):
        result = CliRunner().invoke(app, [*command, "--server", url])
        line = _one_line_error(result)
        assert BAD_URLS[url] in line and "passed" not in result.output, line
        assert "hunter2" not in result.output and "ter2" not in result.output, "credentials are never shown"


def test_server_addresses_parse_to_what_is_contacted():
    from irevnet.runtime.backends.triton_client import ServerAddress

    cases = {
        "127.0.0.1:8000": ("http", "127.0.0.1", 8000, "http://127.0.0.1:8000"),
        "grpc://localhost": ("grpc", "localhost", 8001, "grpc://localhost:8001"),
        "https://triton.example.org": ("https", "triton.example.org", 443, "https://triton.example.org:443"),
        "grpc://[::1]:9001": ("grpc", "::1", 9001, "grpc://[::1]:9001"),
        "http://alice:s3cret@10.0.0.2:8000/": ("http", "10.0.0.2", 8000, "http://***@10.0.0.2:8000"),
        "http://triton_server:8000": ("http", "triton_server", 8000, "http://triton_server:8000"),  # compose names
    }
    for url, (scheme, host, port, display) in cases.items():
        address = ServerAddress.parse(url)
        assert (address.scheme, address.host, address.port, address.display) == (scheme, host, port, display), url
        assert "s3cret" not in repr(address)
    assert ServerAddress.parse("http://alice:s3cret@h:1").auth_headers() == {"Authorization": "Basic YWxpY2U6czNjcmV0"}
