"""`python -m irevnet` is the `irevnet` command (and what torchrun starts for multi-GPU training)."""

from .cli import main

main()
