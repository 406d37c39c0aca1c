"""Serving a bundle with Triton Inference Server: a model repository written from the manifest
(repository.py), the python backend's model that runs the graphs through irevnet.runtime
(triton_model.py, copied into the repository), a local `tritonserver` launcher (server.py), and a
client backend so that verify and bench judge a live server like a local runtime (client.py).

Torch-free, like the runtime. tritonclient (the `serve` extra) is imported where it is used.
"""
