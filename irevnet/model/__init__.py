"""The i-RevNet itself: architecture configs (torch-free), layers, the network, memory-saving
reversible backprop, and the torch modules each exported graph is traced from.

Model code does no file I/O: checkpoints are read and written by `irevnet.io.checkpoint`.
`irevnet.model.config` imports no torch, so the runtime reads a bundle's config through it.
"""
