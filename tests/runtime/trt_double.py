"""A test double of the `tensorrt` module and of CUDA, for machines without either.

It has exactly the API surface irevnet calls (names and enums as in the TensorRT 10.13 and 11.1
Python bindings, NVIDIA/TensorRT python/src) and records how it was called. Its "engines" run
the ONNX graph with ONNX Runtime on the CPU and its "device memory" is host memory. It checks
irevnet's plumbing (flags, profiles, buffers, shapes, manifest records); it is no evidence that
TensorRT accepts the graphs, which the `tensorrt`-marked tests check on a GPU.
"""

from __future__ import annotations

import enum
import json
import types

import numpy as np

# Parsed ONNX models by sha256: the double's serialized engines name their model by digest.
MODELS: dict[str, bytes] = {}
# The doc_string that makes the double's parser fail on a node, as TensorRT fails on a node it has
# no importer for (a real graph's operators all pass irevnet's own check first).
UNSUPPORTED = "unsupported by this TensorRT"


def make_tensorrt(version: str = "10.13.0.35") -> types.ModuleType:
    """A fake `tensorrt` module; enum values follow the given major version's headers."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # what builders were asked to do, for the tests

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    # NetworkDefinitionCreationFlag: kSTRONGLY_TYPED is 1 in 10.x (kEXPLICIT_BATCH is 0) and 0 in 11.x
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1 if major == 10 else 0}
    )
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 6, "VERSION_COMPATIBLE": 13 if major == 10 else 12})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.HardwareCompatibilityLevel = enum.IntEnum(
        "HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2}
    )
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.ILogger = ILogger
    trt.nptype = lambda dtype: np.float32

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.path, self.inputs = flags, None, []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, node, op, desc):
            self._node, self._op, self._desc = node, op, desc

        def node(self):
            return 3

        def node_name(self):
            return self._node

        def node_operator(self):
            return self._op

        def desc(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, model, path=None):
            """TensorRT's OnnxParser.parse(model bytes, path=None); the model is kept by its sha256,
            which the double's engines name instead of a file."""
            import hashlib

            import onnx

            proto = onnx.load_model_from_string(bytes(model))
            # a node the test marks stands for one this TensorRT has no importer for
            bad = [n for n in proto.graph.node if n.doc_string == UNSUPPORTED]
            if bad:
                self.errors = [ParserError(bad[0].name, bad[0].op_type, "no importer registered")]
                return False
            digest = hashlib.sha256(bytes(model)).hexdigest()
            MODELS[digest] = bytes(model)
            self.network.path = digest
            for value in proto.graph.input:
                dims = [d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims))
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, data):
            self.entries = json.loads(data.decode()) if data else []

        def serialize(self):
            return json.dumps(self.entries).encode()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class BuilderConfig:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TF32 is on by default, as in TensorRT
            self.cache, self.profiles, self.pools = None, [], {}
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def set_flag(self, flag):
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            (shapes,) = config.profiles[0].shapes.values()
            config.cache.entries.append(network.path)  # the shared cache sees every graph
            trt.calls.append({"flags": network.flags, "config": config, "shapes": shapes, "path": network.path})
            return json.dumps({"onnx": network.path, "profile": shapes, "version": trt.__version__}).encode()

    class Engine:
        def __init__(self, record):
            import onnxruntime as ort

            self.session = ort.InferenceSession(MODELS[record["onnx"]], providers=["CPUExecutionProvider"])
            self.profile = record["profile"]
            self.names = [v.name for v in self.session.get_inputs()] + [v.name for v in self.session.get_outputs()]
            self.n_inputs = len(self.session.get_inputs())

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if self.names.index(name) < self.n_inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            values = self.session.get_inputs() + self.session.get_outputs()
            shape = next(v.shape for v in values if v.name == name)
            return [d if isinstance(d, int) else -1 for d in shape]

        def get_tensor_profile_shape(self, name, profile_index):
            return self.profile

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profile
            if not lo[0] <= shape[0] <= hi[0]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            (n,) = {s[0] for s in self.shapes.values()}
            return (n, *self.engine.get_tensor_shape(name)[1:])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            feeds = {
                name: MEMORY.read(self.addresses[name], shape) for name, shape in self.shapes.items()
            }
            outputs = self.engine.session.run(None, feeds)
            for value, result in zip(self.engine.session.get_outputs(), outputs):
                MEMORY.write(self.addresses[value.name], result.astype(np.float32))
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            try:
                record = json.loads(bytes(data).decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None
            return Engine(record)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


class _Memory:
    """Host bytes standing in for device allocations, keyed by fake pointers."""

    def __init__(self):
        self.blocks, self.next = {}, 0x1000

    def malloc(self, nbytes):
        ptr, self.next = self.next, self.next + nbytes + 256
        self.blocks[ptr] = bytearray(nbytes)
        return ptr

    def read(self, ptr, shape):
        n = int(np.prod(shape)) * 4
        return np.frombuffer(bytes(self.blocks[ptr][:n]), dtype=np.float32).reshape(shape)

    def write(self, ptr, array):
        self.blocks[ptr][: array.nbytes] = array.tobytes()


MEMORY = _Memory()


class FakeCuda:
    """irevnet.runtime.gpu's interface over _Memory; one fake GPU of compute capability 8.9."""

    def __init__(self, name="Fake GPU", cc=(8, 9)):
        self.gpu = (name, cc)
        self.freed = []

    def device(self):
        return self.gpu

    def stream(self):
        return object()

    def handle(self, stream):
        return 1

    def malloc(self, nbytes):
        return MEMORY.malloc(nbytes)

    def free(self, ptr):
        self.freed.append(ptr)

    def to_device(self, ptr, array, stream):
        MEMORY.write(ptr, np.ascontiguousarray(array))

    def to_host(self, array, ptr, stream):
        array[...] = MEMORY.read(ptr, array.shape)

    def event(self):
        return object()

    def record(self, event, stream):
        pass

    def synchronize(self, stream):
        pass

    def elapsed_ms(self, start, end):
        return 0.5
