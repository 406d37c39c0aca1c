import json
import os
import subprocess
import sys

import pytest
import torch

from irevnet.errors import IRevNetError
from irevnet.io.checkpoint import load_checkpoint
from irevnet.training.loop import train
from irevnet.training.options import TrainOptions
from irevnet.training.records import resume_options

TIMING_KEYS = {"images_per_s", "epoch_seconds"}


def _metrics(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def test_tiny_model_learns_the_real_digits(trained_tiny):
    history = _metrics(trained_tiny)
    assert len(history) == 10
    # measured: 98.9% held-out top-1 after 10 epochs (chance is 10%); a margin for BLAS differences
    assert history[-1]["test_top1"] >= 90.0, history[-1]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10
    assert (trained_tiny / "best.pt").is_file() and json.loads((trained_tiny / "run.json").read_text())["world_size"] == 1
    best = load_checkpoint(trained_tiny / "best.pt")
    assert best.meta["dataset"] == "digits" and len(best.meta["mean"]) == 1
    assert best.meta["top1"] == max(m["test_top1"] for m in history)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    train(TrainOptions(dataset="digits", out=str(full), epochs=2, device="cpu"))
    split = tmp_path / "split"
    train(TrainOptions(dataset="digits", out=str(split), epochs=1, device="cpu"))
    train(TrainOptions(dataset="digits", out=str(split), epochs=2, device="cpu", resume=True))
    assert _metrics(split) == _metrics(full), "same seed: identical losses and accuracies, epoch by epoch"
    a = load_checkpoint(full / "last.pt").model.state_dict()
    b = load_checkpoint(split / "last.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    train(TrainOptions(dataset="digits", out=str(tmp_path), epochs=1, device="cpu"))
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(IRevNetError, match="--resume"):
        train(TrainOptions(dataset="digits", out=str(tmp_path), epochs=1, device="cpu"))
    assert (tmp_path / "last.pt").read_bytes() == before
    with pytest.raises(IRevNetError, match="does not exist"):
        train(TrainOptions(dataset="digits", out=str(tmp_path / "new"), epochs=1, resume=True, device="cpu"))



def test_resume_continues_with_the_recorded_options(tmp_path):
    """A run resumed without repeating its flags must not fall back to the defaults (another
    dataset, another learning rate); flags given with the resume change only themselves."""
    train(TrainOptions(dataset="synthetic", out=str(tmp_path), epochs=1, lr=0.05, seed=3, device="cpu"))
    opts = resume_options(tmp_path, epochs=2)
    assert (opts.dataset, opts.lr, opts.seed, opts.epochs, opts.resume) == ("synthetic", 0.05, 3, 2, True)
    train(opts)
    assert [m["lr"] for m in _metrics(tmp_path)] == [0.05, 0.05]
    with pytest.raises(IRevNetError, match="trains dataset 'synthetic', not 'digits'; resume it with the same"):
        train(TrainOptions(dataset="digits", out=str(tmp_path), epochs=3, resume=True, device="cpu"))
    with pytest.raises(IRevNetError, match="run.json does not exist"):
        resume_options(tmp_path / "new")

def test_two_process_gloo_run_writes_one_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "irevnet", "train", "-d", "digits", "-o", str(out), "--epochs", "1", "--device", "cpu", "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2, "both processes joined the process group"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "run.json"]
    (epoch,) = _metrics(out)
    assert epoch["test_images"] == 360, "the sharded evaluation saw every test image exactly once"


def test_a_loss_that_diverges_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's loss alone turns NaN at its third step (injected by a launcher that wraps the CLI):
    both ranks must stop with exit 1 and one line, instead of rank 0 waiting forever in the next
    all-reduce. Bounded by the timeout: a hang fails the test."""
    launcher = tmp_path / "nan_on_rank1.py"
    launcher.write_text(
        "import os, sys, torch\n"
        "from irevnet.cli import main\n"
        "calls = [0]\n"
        "real = torch.nn.functional.cross_entropy\n"
        "def poisoned(*args, **kwargs):\n"
        "    loss = real(*args, **kwargs)\n"
        "    if os.environ['RANK'] == '1' and loss.requires_grad:\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 3:\n"
        "            return loss * float('nan')\n"
        "    return loss\n"
        "torch.nn.functional.cross_entropy = poisoned\n"
        "sys.argv[0] = 'irevnet'\n"
        "main()\n"
    )
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(launcher),
           "train", "-d", "digits", "-o", str(out), "--epochs", "1", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    messages = [line for line in proc.stderr.splitlines() if "training diverged in epoch 1" in line]
    assert len(messages) == 2, proc.stderr[-3000:]  # one line from each rank
    assert any("epoch 1: the loss is nan;" in m for m in messages) and any("epoch 1 on another process;" in m for m in messages)
    assert not (out / "last.pt").exists(), "no checkpoint of the diverged epoch"


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("training.optimizer", "resume state 'optimizer' is missing or malformed"),
        ("training.epoch", "resume state 'epoch' is missing or malformed"),
        ("training.optimizer.state", "optimizer or scheduler state does not fit the model"),
        ("run.lr", "option 'lr' is 'fast', not a float?"),
        ("run.epochs", "option 'epochs' is 'True', not a int?"),
        ("run.deep", "run.json is not a run record of `irevnet train`"),
    ],
)
def test_corrupt_resume_state_or_run_record_is_one_line(tmp_path, corrupt, message):
    train(TrainOptions(dataset="synthetic", out=str(tmp_path), epochs=1, device="cpu"))
    where, _, key = corrupt.partition(".")
    if where == "training":
        raw = torch.load(tmp_path / "last.pt", weights_only=True)
        if key == "optimizer.state":
            raw["training"]["optimizer"]["param_groups"] = [{"params": [0]}]  # one group, the model has params
            raw["training"]["optimizer"]["state"] = {0: {"momentum_buffer": torch.zeros(3)}}
        else:
            raw["training"][key] = "garbage"
        torch.save(raw, tmp_path / "last.pt")
    elif key == "deep":
        (tmp_path / "run.json").write_text("[" * 200_000 + "]" * 200_000)
    else:
        record = json.loads((tmp_path / "run.json").read_text())
        record["options"][key] = {"lr": "fast", "epochs": True}[key]
        (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(IRevNetError, match=message) as err:
        train(resume_options(tmp_path, epochs=2))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5"], ids=["nan", "inf", "text"])
def test_resume_refuses_a_history_it_could_not_write_back_before_training(tmp_path, value):
    """A last.pt whose history holds NaN trained a whole epoch, then failed writing metrics.jsonl
    (strict JSON) and never wrote best.pt; it is refused before any training, files untouched."""
    train(TrainOptions(dataset="digits", out=str(tmp_path), epochs=1, device="cpu"))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["training"]["history"][0]["test_loss"] = value
    torch.save(state, tmp_path / "last.pt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(IRevNetError, match="resume history entry 1 holds 'test_loss' = .*, not a finite number"):
        train(TrainOptions(dataset="digits", out=str(tmp_path), epochs=2, device="cpu", resume=True))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
