"""Whole-dataset evaluation of a deployed bundle (or a checkpoint): every image of a split
streamed through the runtime's backends, one Parquet record per image, resumable, sharded for a
scheduler's array jobs or spread over Ray; `irevnet evaluate` and `irevnet invert` on bundles.

    engine.py     a target's graphs over chunks of items: decoding threads ahead of the runtime
    records.py    the Parquet records, their metadata (what run they are of), chunks, merging
    summary.py    the summary, computed from the records by one code path
    run.py        options, chunks, resume, shards: `irevnet evaluate`
    ray_runner.py the chunks on Ray actors (each node checks the bundle by sha256)
    grids.py      the PNG grids: images whose top-1 changed, originals beside reconstructions
    invert.py     `irevnet invert BUNDLE`: every image and its reconstruction from z, as PNGs

A split's images are listed and decoded by irevnet.io.splits. Uses the runtime's backends and
never imports torch, except to run a checkpoint.
"""
