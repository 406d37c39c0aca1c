"""Training, evaluation and inversion on real data: torch datasets over `irevnet.io.datasets`,
recipes, the (resumable, multi-process) loop, its run records, and the memory measurement."""
