"""Files from outside: checkpoints (irevnet's own and foreign formats), the restricted unpicklers
they and CIFAR batches are read with, dataset readers, atomic outputs, and image/plot writers.

Every reader treats its file as untrusted: nothing in it chooses a path, runs code, or sizes an
allocation beyond the bytes present.
"""
