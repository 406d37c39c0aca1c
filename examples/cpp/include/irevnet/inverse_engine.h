// The inverse of an i-RevNet as a TensorRT engine: z (N, C, h, w) -> image (N, C', H, W).
// Links only against the TensorRT runtime (nvinfer) and the CUDA runtime (cudart).
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "irevnet/io.h"

namespace irevnet {

class InverseEngine {
public:
    // Deserializes `engine_path` (inverse.engine from `irevnet build`) on the current CUDA device.
    explicit InverseEngine(const std::string& engine_path);
    ~InverseEngine();
    InverseEngine(const InverseEngine&) = delete;
    InverseEngine& operator=(const InverseEngine&) = delete;

    // Runs the inverse on a batch of z (float32, (N, C, h, w)); returns the normalised image.
    Tensor run(const Tensor& z);

    int64_t max_batch() const { return max_batch_; }

private:
    class Logger : public nvinfer1::ILogger {
    public:
        void log(Severity severity, const char* msg) noexcept override;
    };

    void reserve(size_t input_bytes, size_t output_bytes);

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    std::string input_name_, output_name_;
    void* d_input_ = nullptr;
    void* d_output_ = nullptr;
    size_t input_capacity_ = 0, output_capacity_ = 0;
    int64_t max_batch_ = 0;
};

}  // namespace irevnet
