"""From a checkpoint to a bundle of ONNX graphs: the torch modules traced (irevnet.model.graphs),
ONNX export and checks (onnx_export.py), int8 Q/DQ (quantize.py), the exact coupling's grid
(coupling.py), one shared weights file (weights.py), the inverse's error gain (fidelity.py), and
the bundle written and verified atomically (bundle.py). Needs torch, except options.py (what an
export takes), which the CLI imports at start-up.

TensorRT engines are built on the machine that runs them, without torch: irevnet.runtime.trt_build.
"""
