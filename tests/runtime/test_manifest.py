"""The typed manifest and reference samples (runtime/manifest.py, runtime/reference.py): what
readers get from Bundle.open instead of a dict read by key."""

import json

import pytest

from irevnet.contract import BATCH_DIM, FORWARD, INVERSE, MANIFEST, REFERENCE_IMAGES, Precision, Z
from irevnet.runtime import Bundle


def test_the_typed_manifest_reads_what_export_writes(bundles):
    """Typed and back: a bundle's manifest as attributes, and to_dict() is the JSON it came from."""
    bundle = Bundle.open(bundles[Precision.fp32])
    written = json.loads((bundle.path / MANIFEST).read_text())
    m = bundle.manifest
    assert m.to_dict() == written and m.to_dict() is not m.to_dict()
    assert m.precision is Precision.fp32 and m.batch.max == written["batch"]["max"] == bundle.max_batch
    assert m.tolerances.round_trip == written["tolerances"]["round_trip"]
    assert [t.name for t in m.graphs[FORWARD].outputs] == [t["name"] for t in written["graphs"][FORWARD]["outputs"]]
    assert m.graphs[INVERSE].inputs[0].shape == (BATCH_DIM, *written["graphs"][INVERSE]["inputs"][0]["shape"][1:])
    assert m.weights.file in m.files and m.checkpoint.sha256 == written["checkpoint"]["sha256"]
    with pytest.raises(AttributeError):
        m.batch.max = 1  # frozen: a reader cannot change what was checked
    samples = bundle.reference(REFERENCE_IMAGES, Z)
    assert samples.images.shape[1:] == tuple(bundle.config.in_shape) and samples.z.shape[1:] == tuple(bundle.config.z_shape)
    assert samples.logits is None and samples.blocks == (), "what was not asked for is not read"
