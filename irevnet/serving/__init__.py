"""Serving a bundle with Triton Inference Server: a model repository written from the manifest
(repository.py) with its record of every file's sha256 (record.py), the python backend's model
that runs the graphs through irevnet.runtime (triton_model.py, copied into the repository), the
server's own Python environment, made on first use (environment.py), and `irevnet serve`
(server.py), which stages the checked repository and runs `tritonserver` under a supervisor
process (supervisor.py). The client that verify and bench use to judge a live server like a local
runtime is a runtime backend: irevnet.runtime.backends.triton_client and triton_backend.

Torch-free, like the runtime. tritonclient (the `serve` extra) is imported where it is used.
"""
