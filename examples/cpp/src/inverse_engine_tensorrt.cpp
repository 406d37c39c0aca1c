// InverseEngine on TensorRT: the bundle's inverse.engine on the current CUDA device.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <iostream>
#include <stdexcept>
#include <vector>

#include "irevnet/inverse_engine.h"

namespace irevnet {

namespace {

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

size_t volume(const nvinfer1::Dims& dims) {
    size_t n = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i) n *= static_cast<size_t>(dims.d[i]);
    return n;
}

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
    }
};

}  // namespace

struct InverseEngine::Impl {
    Impl(const std::string& engine_path, const std::string& blob, const std::string& built_with);
    ~Impl();
    void reserve(size_t input_bytes, size_t output_bytes);
    Tensor run(const Tensor& z);

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    std::string input_name_, output_name_, built_with_;
    void* d_input_ = nullptr;
    void* d_output_ = nullptr;
    size_t input_capacity_ = 0, output_capacity_ = 0;
    int64_t max_batch_ = 0;
};

InverseEngine::Impl::Impl(const std::string& engine_path, const std::string& blob, const std::string& built_with)
    : built_with_(built_with) {
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("could not create the TensorRT runtime");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
        throw std::runtime_error(engine_path + ": TensorRT could not deserialize it (built for another TensorRT "
                                               "version or GPU? rebuild with `irevnet build`)");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("could not create an execution context");
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
        const char* name = engine_->getIOTensorName(i);
        if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
            throw std::runtime_error(std::string("tensor ") + name + " is not float32; irevnet bundles keep fp32 I/O");
        (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? input_name_ : output_name_) = name;
    }
    if (input_name_.empty() || output_name_.empty()) throw std::runtime_error("engine must have one input and one output");
    max_batch_ = engine_->getProfileShape(input_name_.c_str(), 0, nvinfer1::OptProfileSelector::kMAX).d[0];
    check(cudaStreamCreate(&stream_), "cudaStreamCreate");
}

InverseEngine::Impl::~Impl() {
    if (d_input_) cudaFree(d_input_);
    if (d_output_) cudaFree(d_output_);
    if (stream_) cudaStreamDestroy(stream_);
}

void InverseEngine::Impl::reserve(size_t input_bytes, size_t output_bytes) {
    if (input_bytes > input_capacity_) {
        if (d_input_) check(cudaFree(d_input_), "cudaFree");
        check(cudaMalloc(&d_input_, input_bytes), "cudaMalloc");
        input_capacity_ = input_bytes;
    }
    if (output_bytes > output_capacity_) {
        if (d_output_) check(cudaFree(d_output_), "cudaFree");
        check(cudaMalloc(&d_output_, output_bytes), "cudaMalloc");
        output_capacity_ = output_bytes;
    }
}

Tensor InverseEngine::Impl::run(const Tensor& z) {
    if (z.shape.size() != 4) throw std::runtime_error("z must be (N, C, H, W)");
    if (z.shape[0] < 1 || z.shape[0] > max_batch_)
        throw std::runtime_error("batch " + std::to_string(z.shape[0]) + " is outside the engine's 1.." + std::to_string(max_batch_));
    nvinfer1::Dims in_dims{};
    in_dims.nbDims = 4;
    for (int i = 0; i < 4; ++i) in_dims.d[i] = z.shape[static_cast<size_t>(i)];
    if (!context_->setInputShape(input_name_.c_str(), in_dims))
        throw std::runtime_error("the engine does not accept this z shape (check the bundle's z shape)");
    nvinfer1::Dims out_dims = context_->getTensorShape(output_name_.c_str());
    Tensor image;
    for (int32_t i = 0; i < out_dims.nbDims; ++i) image.shape.push_back(out_dims.d[i]);
    image.data.resize(volume(out_dims));

    const size_t in_bytes = z.data.size() * sizeof(float), out_bytes = image.data.size() * sizeof(float);
    reserve(in_bytes, out_bytes);
    check(cudaMemcpyAsync(d_input_, z.data.data(), in_bytes, cudaMemcpyHostToDevice, stream_), "copy z to the GPU");
    context_->setTensorAddress(input_name_.c_str(), d_input_);
    context_->setTensorAddress(output_name_.c_str(), d_output_);
    if (!context_->enqueueV3(stream_)) throw std::runtime_error("TensorRT enqueueV3 failed");
    check(cudaMemcpyAsync(image.data.data(), d_output_, out_bytes, cudaMemcpyDeviceToHost, stream_), "copy the image back");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return image;
}

InverseEngine::InverseEngine(const std::string& bundle_dir, const Manifest& manifest) {
    if (manifest.inverse_engine.empty())
        throw std::runtime_error(bundle_dir + " has no TensorRT engines; run `irevnet build " + bundle_dir + "` first");
    // the engine's bytes, checked against the manifest's sha256, are what TensorRT deserializes
    impl_ = std::make_unique<Impl>(bundle_dir + "/" + manifest.inverse_engine,
                                   read_verified(bundle_dir, manifest, manifest.inverse_engine), manifest.tensorrt_version);
}

InverseEngine::~InverseEngine() = default;

Tensor InverseEngine::run(const Tensor& z) { return impl_->run(z); }

int64_t InverseEngine::max_batch() const { return impl_->max_batch_; }

std::string InverseEngine::describe() const {
    return "TensorRT engine built with " + impl_->built_with_ + ", this binary compiled against " +
           std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
           std::to_string(NV_TENSORRT_PATCH) + ", CUDA GPU";
}

}  // namespace irevnet
