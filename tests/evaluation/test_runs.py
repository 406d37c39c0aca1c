"""A run cut into chunks gives the same records, byte for byte, whether it ran whole, was killed
and resumed, or ran as shards that were then merged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import Precision
from irevnet.errors import IRevNetError
from irevnet.evaluation.run import EvaluateOptions, evaluate

runner = CliRunner()
SYNTHETIC = 4096  # images: long enough to be killed in the middle, a few seconds on two cores


def _options(bundle, records, **kw) -> EvaluateOptions:
    return EvaluateOptions(target=str(bundle), dataset="synthetic", limit=SYNTHETIC, chunk_size=256, records=str(records),
                           **kw)


@pytest.fixture(scope="module")
def whole(bundles, tmp_path_factory):
    """The uninterrupted run's records and report."""
    out = tmp_path_factory.mktemp("whole") / "whole.parquet"
    return out, evaluate(_options(bundles[Precision.fp32], out))


def test_sigkill_then_resume_gives_the_uninterrupted_records_and_summary(bundles, whole, tmp_path):
    """Each finished chunk is written atomically: after SIGKILL, --resume redoes at most the chunk
    that was in flight, and the records are those of the uninterrupted run, bit for bit."""
    records = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    args = [sys.executable, "-m", "irevnet", "evaluate", str(bundles[Precision.fp32]), "-d", "synthetic", "--limit",
            str(SYNTHETIC), "--chunk-size", "256", "--records", str(records), "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("chunk-*.parquet"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("chunk-*.parquet")))
    assert 3 <= done < SYNTHETIC // 256, f"killed in the middle: {done} of {SYNTHETIC // 256} chunks done"
    assert not records.exists()
    result = runner.invoke(app, [*args[3:], "--resume"])
    assert result.exit_code == 0, result.output
    assert f"{SYNTHETIC // 256 - done} chunks computed, {done} resumed" in result.output, result.output
    assert records.read_bytes() == whole[0].read_bytes(), "the same records, byte for byte"
    resumed = evaluate(_options(bundles[Precision.fp32], tmp_path / "again.parquet"))
    assert resumed.summary == whole[1].summary, "and the same summary"


def test_an_unfinished_run_is_not_overwritten_without_resume(bundles, tmp_path):
    parts = tmp_path / "r.parquet.parts"
    parts.mkdir()
    (parts / "chunk-000000.parquet").write_bytes(b"half a run")
    with pytest.raises(IRevNetError, match=r"r.parquet.parts holds the chunks of an unfinished run: continue it with "
                                           r"--resume, or remove it"):
        evaluate(_options(bundles[Precision.fp32], tmp_path / "r.parquet"))
    assert (parts / "chunk-000000.parquet").read_bytes() == b"half a run"
    with pytest.raises(IRevNetError, match="is not a Parquet file"):
        evaluate(_options(bundles[Precision.fp32], tmp_path / "r.parquet", resume=True))


@pytest.mark.parametrize("shards", [2, 4])
def test_shards_merged_give_the_whole_runs_records(bundles, whole, tmp_path, shards):
    files = []
    for i in range(shards):
        files.append(tmp_path / f"shard{i}.parquet")
        evaluate(_options(bundles[Precision.fp32], files[-1], shard=f"{i}/{shards}"))
    report = evaluate(EvaluateOptions(merge=[str(f) for f in files], records=str(tmp_path / "merged.parquet")))
    assert (tmp_path / "merged.parquet").read_bytes() == whole[0].read_bytes(), "the same records, byte for byte"
    assert report.summary == whole[1].summary


def test_merge_refuses_overlaps_gaps_and_other_runs(bundles, tmp_path):
    half, quarter, other = (tmp_path / f"{n}.parquet" for n in ("half", "quarter", "other"))
    evaluate(_options(bundles[Precision.fp32], half, shard="0/2"))  # chunks 0, 2, ..., 14
    evaluate(_options(bundles[Precision.fp32], quarter, shard="1/4"))  # chunks 1, 5, 9, 13
    evaluate(_options(bundles[Precision.mixed], other, shard="1/2"))  # another bundle
    out = str(tmp_path / "m.parquet")
    with pytest.raises(IRevNetError, match=r"image 0 is in .*half.parquet and .*half.parquet: the shards overlap"):
        evaluate(EvaluateOptions(merge=[str(half), str(half)], records=out))
    with pytest.raises(IRevNetError, match=r"1024 images of the split are in no file given \(the first: index 768\)"):
        evaluate(EvaluateOptions(merge=[str(half), str(quarter)], records=out))
    with pytest.raises(IRevNetError, match=r"other.parquet records another run than .*half.parquet \(target_sha256 "
                                           r"[0-9a-f]{64} where this run has [0-9a-f]{64}\)"):
        evaluate(EvaluateOptions(merge=[str(half), str(other)], records=out))
    assert not (tmp_path / "m.parquet").exists()


def test_the_summary_reads_a_few_rows_at_a_time_and_gives_the_same_numbers(bundles, whole, tmp_path, monkeypatch):
    """The summary and the agreement walk the records a batch of rows at a time (never a split's
    logits at once): batches of 7 rows against batches of 5 (so the two files' batches never line
    up) give the numbers of batches of 1,024, and a run against itself agrees on every image."""
    from irevnet.evaluation import records

    path, report = whole
    against = evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), dataset="synthetic",
                                       limit=SYNTHETIC, chunk_size=256, against=str(path)))
    assert against.summary.agreement.images == SYNTHETIC and against.summary.agreement.top1 == 1.0
    assert against.summary.agreement.drift["max"] == 0.0, "the same graphs on the same images: the same logits"
    batched = records.batches
    sizes = iter([7, 5] * 8)
    monkeypatch.setattr(records, "batches", lambda files, columns, rows=1024: batched(files, columns, next(sizes)))
    from irevnet.evaluation import summary as summary_module

    monkeypatch.setattr(summary_module, "batches", records.batches)
    small = evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), dataset="synthetic", limit=SYNTHETIC,
                                     chunk_size=256, against=str(path)))
    assert small.summary == against.summary
    assert (small.summary.images, small.summary.top1, small.summary.loss) == (report.summary.images,
                                                                             report.summary.top1, report.summary.loss)


def test_against_takes_whole_runs(bundles, whole, tmp_path):
    with pytest.raises(IRevNetError, match=r"--against compares whole runs: merge the shards first"):
        _options(bundles[Precision.fp32], tmp_path / "s.parquet", shard="0/2", against=str(whole[0]))
    shard = tmp_path / "shard.parquet"
    evaluate(_options(bundles[Precision.fp32], shard, shard="1/2"))
    with pytest.raises(IRevNetError, match=r"--against records shard 1/2 of a run; merge its shards first"):
        evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), dataset="synthetic", limit=SYNTHETIC,
                                 chunk_size=256, against=str(shard)))
