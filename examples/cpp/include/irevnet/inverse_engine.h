// The inverse of an i-RevNet: z (N, C, h, w) -> image (N, C', H, W), on the backend chosen when
// the example is configured (CMake IREVNET_BACKEND):
//   TENSORRT  the bundle's inverse.engine from `irevnet build`, on a CUDA GPU (links nvinfer, cudart);
//   OPENVINO  the bundle's inverse.onnx and weights.bin, on the CPU (links openvino::runtime).
// The header names neither, so the app and its I/O code are the same for both.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "irevnet/io.h"

namespace irevnet {

class InverseEngine {
public:
    // Opens the bundle's inverse for this build's backend; throws std::runtime_error with the fix.
    InverseEngine(const std::string& bundle_dir, const Manifest& manifest);
    ~InverseEngine();
    InverseEngine(const InverseEngine&) = delete;
    InverseEngine& operator=(const InverseEngine&) = delete;

    // Runs the inverse on a batch of z (float32, (N, C, h, w)); returns the normalised image.
    Tensor run(const Tensor& z);

    int64_t max_batch() const;
    // One line for the log: backend, its version, device and precision.
    std::string describe() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace irevnet
