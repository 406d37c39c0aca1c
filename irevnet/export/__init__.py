"""From a checkpoint to deployable artifacts: ONNX graphs (bundle.py, graphs.py, onnx_export.py,
which need torch) and TensorRT engines (trt_build.py, which needs only TensorRT).

Nothing is imported here, so that `irevnet build` runs on GPU machines without torch.
"""
