"""Fuzzes irevnet's readers of untrusted files through the real CLI, one forked process per case.

    python tools/fuzz.py --checkpoints 10000 --bundles 1000 --seed 0 --report fuzz.json

Seeds are made fresh in a temporary folder: irevnet-tiny trained briefly on the bundled digits,
saved as irevnet's zip checkpoint, the same in PyTorch's legacy (< 1.6) stream, a bare state dict
and a reference-ImageNet dict; and an fp32 bundle exported from it. Each case mutates one seed
and runs `irevnet info -c FILE` (checkpoints) or `irevnet verify BUNDLE` (bundles) in a child
forked from this process, with stdout and stderr captured.

Mutations: checkpoints get byte flips, overwritten spans, inserted pickle opcodes, duplicated or
deleted spans, truncation and integer rewrites (sizes, strides, element counts) inside the
pickle, re-zipped with valid CRCs so that the unpickler, not the zip reader, sees them. Bundles
get the same on one file (manifest fields, graph protobuf fields, weights, reference.npz headers),
with the manifest's sha256 rewritten to match in most cases (a hostile bundle is self-consistent),
and file-system changes (links out, FIFOs, folders in place of files).

Outcome of a case: `ok` (exit 0), `refused` (exit 1 or 2 with one `error:` line, no traceback),
`traceback`, `hang` (killed after --timeout seconds) or `memory` (peak resident memory over
--max-memory, read from the child's rusage). The summary prints the counts per mutation kind and
writes each finding (seed, case number, mutation, output) to the report; any finding exits 1.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from irevnet.contract import FORWARD, IMAGE, LOGITS, MANIFEST, ONNX_SUFFIX, WEIGHTS, Z, graph_file

GIB = 1 << 30


# -- seeds ------------------------------------------------------------------------------------


def make_seeds(root: Path) -> tuple[dict[str, Path], Path]:
    """Checkpoint files of each layout irevnet reads, and an fp32 bundle of the same model."""
    import torch

    from irevnet.export.bundle import ExportOptions, export_bundle
    from irevnet.training.loop import train
    from irevnet.training.options import TrainOptions

    run = root / "run"
    train(TrainOptions(model="irevnet-tiny", dataset="digits", out=str(run), epochs=2, device="cpu"))
    best = run / "best.pt"
    state = torch.load(best, weights_only=True)
    seeds = {"irevnet-zip": best}
    torch.save(state, root / "legacy.pt", _use_new_zipfile_serialization=False)
    seeds["irevnet-legacy"] = root / "legacy.pt"
    torch.save(state["state_dict"], root / "state_dict.pt")
    seeds["state-dict"] = root / "state_dict.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state["state_dict"].items()}, "epoch": 3,
                "best_prec1": 91.0, "arch": "irevnet"}, root / "imagenet.pth.tar", _use_new_zipfile_serialization=False)
    seeds["reference-imagenet"] = root / "imagenet.pth.tar"
    bundle = root / "bundle"
    export_bundle(ExportOptions(checkpoint=str(best), out=str(bundle), dataset="digits", max_batch=8, debug_graphs=False))
    return seeds, bundle


# -- mutations --------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -(2**31)]
# Opcode snippets a hostile pickle might splice in: deep nesting, memo games, big declared lengths,
# globals of the allowlist and outside it.
SNIPPETS = [
    b"(" * 64, b"]" * 64, b"}q\x00" * 8, b"h\x00" * 32, b"2" * 32, b"0" * 8, b"t" * 8, b"e" * 8, b"s" * 8, b"R" * 4,
    b"\x8c\x06_codecs\x8c\x06encode\x93", b"\x8c\x0bcollections\x8c\x07Counter\x93", b"\x8c\x08builtins\x8c\x04eval\x93",
    b"\x8c\x05torch\x8c\x0cFloatStorage\x93", b"\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93",
    b"B\xff\xff\xff\x7f", b"X\xff\xff\xff\xff", b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x8a\x08" + b"\xff" * 8,
    b"J\xff\xff\xff\x7f", b"M\xff\xff", b"K\xff", b"(K\x01K\x02t", b"\x88", b"N", b"\x85", b"\x86", b"\x87", b"Q", b"b",
]


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random byte-level mutation; returns the new bytes and its kind."""
    data = bytearray(data)
    kind = rng.choice(["flip", "span", "insert", "duplicate", "delete", "truncate", "integer"])
    n = max(len(data), 1)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(n) % max(len(data), 1)] ^= 1 << rng.randrange(8)
    elif kind == "span":
        at = rng.randrange(n)
        data[at:at + 8] = bytes(rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)]) for _ in range(rng.randint(1, 8)))
    elif kind == "insert":
        at = rng.randrange(n)
        data[at:at] = rng.choice(SNIPPETS)
    elif kind == "duplicate":
        a = rng.randrange(n)
        b = min(len(data), a + rng.randint(1, 256))
        at = rng.randrange(n)
        data[at:at] = data[a:b] * rng.randint(1, 8)
    elif kind == "delete":
        at = rng.randrange(n)
        del data[at:at + rng.randint(1, 64)]
    elif kind == "truncate":
        del data[rng.randrange(n):]
    else:  # an integer argument of a pickle opcode: sizes, strides, offsets, element counts
        places = _pickle_ints(bytes(data))
        if not places:
            return mutate_bytes(bytes(data), rng)
        at, width = rng.choice(places)
        value = rng.choice(INTERESTING_INTS) if rng.random() < 0.8 else rng.randrange(-(2**31), 2**31)
        fmt = {1: "<B", 2: "<H", 4: "<i"}[width]
        lo, hi = {1: (0, 255), 2: (0, 65535), 4: (-(2**31), 2**31 - 1)}[width]
        data[at:at + width] = struct.pack(fmt, min(max(value, lo), hi))
    return bytes(data), kind


def _pickle_ints(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of each BININT1/BININT2/BININT argument in a pickle stream."""
    import pickletools

    places = []
    try:
        for op, _, pos in pickletools.genops(data):
            width = {"BININT1": 1, "BININT2": 2, "BININT": 4}.get(op.name)
            if width:
                places.append((pos + 1, width))
    except Exception:  # noqa: BLE001 - a stream already mutated: use what was read
        return places
    return places


def mutate_checkpoint(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A zip checkpoint: mutate its pickle or a storage record and re-zip with valid CRCs (90%),
    or the archive's raw bytes; a legacy stream: its raw bytes."""
    if data[:4] != b"PK\x03\x04" or rng.random() < 0.1:
        mutated, kind = mutate_bytes(data, rng)
        return mutated, f"raw-{kind}"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = [(info.filename, z.read(info)) for info in z.infolist()]
    pickles = [i for i, (name, _) in enumerate(entries) if name.endswith("data.pkl")]
    index = pickles[0] if rng.random() < 0.8 or len(entries) == 1 else rng.randrange(len(entries))
    name, body = entries[index]
    if name.endswith("data.pkl"):
        body, kind = mutate_bytes(body, rng)
        kind = f"pickle-{kind}"
    else:
        body = body[: rng.randrange(len(body) + 1)] if rng.random() < 0.5 else body + bytes(rng.randint(1, 4096))
        kind = "record-size"
    entries[index] = (name, body)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for entry_name, entry_body in entries:
            z.writestr(entry_name, entry_body)
    return out.getvalue(), kind


HOSTILE_VALUES = [
    None, True, -1, 0, 2**31, 10**30, 1e308, float("nan"), float("inf"), "", "x" * 5000, "../../../etc/passwd",
    "/etc/passwd", graph_file(FORWARD), "./", "a/../../b", [], [0] * 3, [[[[[]]]]], {}, {"a": 1}, 65, 64, 8192, 2**20,
]


def mutate_manifest(manifest: dict, rng: random.Random) -> str:
    """Replaces, deletes or adds one value somewhere in the manifest tree; returns its path."""
    path, node = [], manifest
    while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        path.append(key)
        node = node[key]
    if not isinstance(node, (dict, list)) or not node:
        return "none"
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    choice = rng.random()
    if choice < 0.15 and isinstance(node, dict):
        del node[key]
        return "manifest-delete"
    if choice < 0.25 and isinstance(node, dict):
        node[f"extra{rng.randrange(100)}"] = rng.choice(HOSTILE_VALUES)
        return "manifest-add"
    old = node[key]
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        node[key] = rng.choice(INTERESTING_INTS) + rng.choice([0, old])
    else:
        node[key] = rng.choice(HOSTILE_VALUES)
    return "manifest-value"


def mutate_graph(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A protobuf-level change of an ONNX graph (operator, attribute, tensor form, names), or raw bytes."""
    import onnx
    from onnx import helper

    if rng.random() < 0.3:
        mutated, kind = mutate_bytes(data, rng)
        return mutated, f"graph-raw-{kind}"
    model = onnx.load_from_string(data)
    graph = model.graph
    kind = rng.choice(["op", "attribute", "initializer-dims", "external-data", "sparse", "loop", "names", "constant", "opset"])
    if kind == "op" and graph.node:
        rng.choice(graph.node).op_type = rng.choice(["Loop", "If", "Scan", "Custom", "Identity", "Conv", "Resize", "Tile"])
    elif kind == "attribute":
        nodes = [n for n in graph.node if n.attribute]
        if nodes:
            attribute = rng.choice(rng.choice(nodes).attribute)
            if attribute.ints:
                attribute.ints[rng.randrange(len(attribute.ints))] = rng.choice(INTERESTING_INTS)
            else:
                attribute.i = rng.choice(INTERESTING_INTS)
    elif kind == "initializer-dims" and graph.initializer:
        tensor = rng.choice(graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 2**20, 2**31, 2**40])
    elif kind == "external-data" and graph.initializer:
        tensor = rng.choice(graph.initializer)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", rng.choice([WEIGHTS, "../secret.bin", "/etc/passwd", graph_file(FORWARD)])),
                           ("offset", str(rng.choice(INTERESTING_INTS))), ("length", str(rng.choice(INTERESTING_INTS)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    elif kind == "sparse":
        values = helper.make_tensor("sv", onnx.TensorProto.FLOAT, [1], [1.0])
        values.data_location = onnx.TensorProto.EXTERNAL
        entry = values.external_data.add()
        entry.key, entry.value = "location", "../secret.bin"
        indices = helper.make_tensor("si", onnx.TensorProto.INT64, [1], [0])
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2**20]))
    elif kind == "loop":
        body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body",
                                 [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                                  helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                                 [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, [])])
        graph.node.insert(0, helper.make_node("Loop", ["trip", "cond"], [], body=body))
        graph.initializer.extend([helper.make_tensor("trip", onnx.TensorProto.INT64, [], [2**40]),
                                  helper.make_tensor("cond", onnx.TensorProto.BOOL, [], [True])])
    elif kind == "names" and graph.output:
        rng.choice(list(graph.output) + list(graph.input)).name = rng.choice([Z, IMAGE, LOGITS, "other", ""])
    elif kind == "constant":
        big = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT, dims=[2**14, 2**14])  # declared, not held
        graph.node.insert(0, helper.make_node("Constant", [], ["unused_big"], value=big))
    elif kind == "opset" and model.opset_import:
        model.opset_import[0].version = rng.choice([1, 7, 17, 21, 99, 2**31 - 1])
    return model.SerializeToString(), f"graph-{kind}"


def mutate_npz(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """reference.npz: a member's npy header (shape, dtype, order) rewritten, or raw bytes."""
    if rng.random() < 0.3:
        mutated, kind = mutate_bytes(data, rng)
        return mutated, f"npz-raw-{kind}"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = [(info.filename, z.read(info)) for info in z.infolist()]
    index = rng.randrange(len(entries))
    name, body = entries[index]
    header_len = struct.unpack("<H", body[8:10])[0]
    header = body[10:10 + header_len].decode("latin1")
    shape = rng.choice(["(2**40,)", "(1099511627776,)", "(0,)", "(-1,)", "(8, 1, 8, 8)", "(99999999, 99999999)", "()"])
    descr = rng.choice(["'<f4'", "'|O'", "'<f8'", "'<U100000'", "'|V1000000000'", "'<f4'"])
    header = f"{{'descr': {descr}, 'fortran_order': {rng.choice(['False', 'True'])}, 'shape': {shape.replace('2**40', str(2**40))}, }}"
    header = header.ljust(header_len - 1) + "\n" if len(header) < header_len else header + "\n"
    body = body[:8] + struct.pack("<H", len(header)) + header.encode("latin1") + body[10 + header_len:]
    entries[index] = (name, body)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as z:
        for entry_name, entry_body in entries:
            z.writestr(entry_name, entry_body)
    return out.getvalue(), "npz-header"


def mutate_bundle(seed: Path, target: Path, rng: random.Random) -> str:
    """A mutated copy of the seed bundle at `target`; returns the mutation's kind."""
    shutil.copytree(seed, target, symlinks=True)
    manifest_path = target / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    listed = sorted(manifest["files"])
    choice = rng.random()
    if choice < 0.3:
        kind = mutate_manifest(manifest, rng)
    elif choice < 0.9:
        name = rng.choice(listed)
        file = target / name
        data = file.read_bytes()
        if name.endswith(ONNX_SUFFIX):
            data, kind = mutate_graph(data, rng)
        elif name.endswith(".npz"):
            data, kind = mutate_npz(data, rng)
        else:
            data, kind = mutate_bytes(data, rng)
            kind = f"file-{kind}"
        file.write_bytes(data)
        if rng.random() < 0.85:  # self-consistent: the manifest records the mutated bytes
            manifest["files"][name] = hashlib.sha256(data).hexdigest()
        else:
            kind += "-stale-hash"
    else:
        name = rng.choice(listed)
        file = target / name
        file.unlink()
        kind = rng.choice(["symlink-out", "fifo", "folder", "symlink-loop", "dev-zero"])
        if kind == "symlink-out":
            file.symlink_to(seed.parent / "legacy.pt")
        elif kind == "fifo":
            os.mkfifo(file)
        elif kind == "folder":
            file.mkdir()
        elif kind == "symlink-loop":
            file.symlink_to(file.name)
        else:
            file.symlink_to("/dev/zero")
        kind = f"fs-{kind}"
    manifest_path.write_text(json.dumps(manifest))
    return kind


# -- running cases ----------------------------------------------------------------------------


def _child(args: list[str], output: Path, memory_cap: int) -> None:
    """Runs the CLI in this forked process and exits with its code (99 for an escaped exception)."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))  # keeps a runaway case from the machine
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    try:
        from irevnet.cli.app import app

        app(args, prog_name="irevnet")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - an escaped exception is the finding
        import traceback

        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def classify(code: int, text: str, max_rss: int, limit: int, killed: bool) -> str:
    if killed:
        return "hang"
    if max_rss > limit or "MemoryError" in text or "std::bad_alloc" in text:
        return "memory"
    if code == 99 or "Traceback" in text or code not in (0, 1, 2):
        return "traceback"
    if code == 0:
        return "ok"
    lines = [line for line in text.splitlines() if line.strip()]
    return "refused" if lines and lines[-1].startswith("error: ") else "traceback"


def run_cases(cases, jobs: int, timeout: float, limit: int, work: Path):
    """Runs (case id, mutation kind, argv, cleanup) tuples, `jobs` at a time; yields results."""
    status = Path("/proc/self/status").read_text().splitlines()
    vm = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
    memory_cap = vm + 4 * GIB  # a runaway case fails its allocation here instead of taking the machine
    running: dict[int, tuple] = {}
    killed: set[int] = set()  # pids killed for running past the timeout, not yet reaped
    cases = iter(cases)
    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < jobs:
            case = next(cases, None)
            if case is None:
                exhausted = True
                break
            output = work / f"out.{case[0]}"
            pid = os.fork()
            if pid == 0:
                _child(case[2], output, memory_cap)
            running[pid] = (case, output, time.monotonic())
        pid, status, usage = os.wait4(-1, os.WNOHANG) if running else (0, 0, None)
        if pid == 0:
            now = time.monotonic()
            for other, (_, _, started) in running.items():
                if now - started > timeout and other not in killed:
                    os.kill(other, signal.SIGKILL)
                    killed.add(other)
            time.sleep(0.005)
            continue
        case, output, _ = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        text = output.read_text(errors="replace")
        output.unlink()
        max_rss = usage.ru_maxrss * 1024
        yield case, classify(code, text, max_rss, limit, pid in killed), code, max_rss, text
        killed.discard(pid)
        case[3]()


def _in_child(fn, *args):
    """fn(*args) in a forked child, its result pickled back: this process stays small, so the
    cases forked from it start at the size of a fresh `irevnet` process."""
    import pickle

    result = Path(tempfile.mkstemp(prefix="irevnet-fuzz-")[1])
    pid = os.fork()
    if pid == 0:
        try:
            result.write_bytes(pickle.dumps(fn(*args)))
            os._exit(0)
        except BaseException:  # noqa: BLE001 - reported by the parent
            import traceback

            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    try:
        if status != 0:
            raise SystemExit("making the seeds failed (see above)")
        return pickle.loads(result.read_bytes())
    finally:
        result.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=10_000, help="mutated checkpoints to run through `irevnet info`")
    parser.add_argument("--bundles", type=int, default=1_000, help="mutated bundles to run through `irevnet verify`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    parser.add_argument("--max-memory", type=float, default=1.0, help="GiB of peak resident memory allowed per case")
    parser.add_argument("--report", type=Path, help="JSON file for the counts and every finding")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="irevnet-fuzz-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the machine cache of the cases, removed at the end
    try:
        # imported once here, so that every forked case starts as warm as a fresh `irevnet` process
        import irevnet.cli
        import irevnet.io.checkpoint
        import irevnet.runtime.backends.ort_backend  # noqa: F401

        print("making seeds (training irevnet-tiny for 2 epochs, exporting a bundle) ...", flush=True)
        seeds, seed_bundle = _in_child(make_seeds, work / "seeds")
        rng = random.Random(args.seed)
        limit = int(args.max_memory * GIB)

        def checkpoint_cases():
            names = sorted(seeds)
            for i in range(args.checkpoints):
                layout = names[i % len(names)]
                data, kind = mutate_checkpoint(seeds[layout].read_bytes(), rng)
                file = work / f"case{i}.pt"
                file.write_bytes(data)
                yield (f"checkpoint-{i}", f"{layout}/{kind}", ["info", "-c", str(file)], file.unlink)

        def bundle_cases():
            for i in range(args.bundles):
                target = work / f"bundle{i}"
                kind = mutate_bundle(seed_bundle, target, rng)
                yield (f"bundle-{i}", kind, ["verify", str(target)], lambda t=target: shutil.rmtree(t, ignore_errors=True))

        report = {"seed": args.seed, "timeout_s": args.timeout, "max_memory_gib": args.max_memory, "classes": {}, "findings": []}
        for family, cases in (("checkpoints", checkpoint_cases()), ("bundles", bundle_cases())):
            counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            peak, started = 0, time.monotonic()
            for n, (case, outcome, code, max_rss, text) in enumerate(run_cases(cases, args.jobs, args.timeout, limit, work), 1):
                counts[case[1].split("/")[-1]][outcome] += 1
                peak = max(peak, max_rss)
                if outcome in ("traceback", "hang", "memory"):
                    report["findings"].append({"case": case[0], "mutation": case[1], "outcome": outcome, "exit": code,
                                               "peak_rss_mib": max_rss >> 20, "output": text[-3000:]})
                    print(f"  {case[0]} {case[1]}: {outcome} (exit {code}, {max_rss >> 20} MiB) {text.strip().splitlines()[-1:]}", flush=True)
                if n % 500 == 0:
                    print(f"  {family}: {n} run, {time.monotonic() - started:.0f} s", flush=True)
            total = collections.Counter()
            for c in counts.values():
                total.update(c)
            report["classes"][family] = {kind: dict(c) for kind, c in sorted(counts.items())}
            report[f"{family}_total"] = dict(total)
            report[f"{family}_peak_rss_mib"] = peak >> 20
            print(f"{family}: {sum(total.values())} cases, {dict(total)}, peak RSS {peak >> 20} MiB, "
                  f"{time.monotonic() - started:.0f} s")
            for kind, c in sorted(counts.items()):
                print(f"  {kind:32s} {dict(c)}")
        if args.report:
            args.report.write_text(json.dumps(report, indent=1))
        return 1 if report["findings"] else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
