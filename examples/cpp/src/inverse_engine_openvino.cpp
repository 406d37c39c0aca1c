// InverseEngine on OpenVINO: the bundle's inverse.onnx (its weights in weights.bin beside it) on
// the CPU. The inference precision is set to f32: on CPUs with AVX-512 BF16 or AMX the plugin's
// default is bf16 for every node, coupling included, which costs the inverse its exactness
// (round trip ~2e-3 instead of ~1e-7). The graph's own types still apply (fp16 F in mixed
// bundles, int8 F in int8 bundles).
#include <openvino/openvino.hpp>

#include <stdexcept>
#include <string>

#include "irevnet/inverse_engine.h"

namespace irevnet {

struct InverseEngine::Impl {
    ov::CompiledModel compiled;
    ov::InferRequest request;
    int64_t max_batch = 0;
};

InverseEngine::InverseEngine(const std::string& bundle_dir, const Manifest& manifest) : impl_(std::make_unique<Impl>()) {
    // A fixed name, not one read from the manifest: a file cannot choose what this app opens.
    const std::string graph = bundle_dir + "/inverse.onnx";
    try {
        ov::Core core;
        std::shared_ptr<ov::Model> model = core.read_model(graph);
        impl_->compiled = core.compile_model(model, "CPU", ov::hint::inference_precision(ov::element::f32),
                                             ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY));
    } catch (const ov::Exception& e) {
        std::string what = e.what();
        throw std::runtime_error("OpenVINO could not load " + graph + ": " + what.substr(0, what.find('\n')));
    }
    if (impl_->compiled.inputs().size() != 1 || impl_->compiled.outputs().size() != 1)
        throw std::runtime_error(graph + " must have one input (z) and one output (image)");
    if (impl_->compiled.input().get_element_type() != ov::element::f32 ||
        impl_->compiled.output().get_element_type() != ov::element::f32)
        throw std::runtime_error(graph + ": irevnet bundles keep float32 I/O");
    impl_->request = impl_->compiled.create_infer_request();
    impl_->max_batch = manifest.max_batch;
}

InverseEngine::~InverseEngine() = default;

Tensor InverseEngine::run(const Tensor& z) {
    if (z.shape.size() != 4) throw std::runtime_error("z must be (N, C, H, W)");
    if (z.shape[0] < 1 || z.shape[0] > impl_->max_batch)
        throw std::runtime_error("batch " + std::to_string(z.shape[0]) + " is outside the bundle's 1.." +
                                 std::to_string(impl_->max_batch));
    ov::Shape shape(z.shape.begin(), z.shape.end());
    // wraps z's memory for the call (OpenVINO reads it, never writes it)
    ov::Tensor input(ov::element::f32, shape, const_cast<float*>(z.data.data()));
    impl_->request.set_input_tensor(input);
    impl_->request.infer();
    const ov::Tensor output = impl_->request.get_output_tensor();
    Tensor image;
    for (size_t d : output.get_shape()) image.shape.push_back(static_cast<int64_t>(d));
    const float* data = output.data<const float>();
    image.data.assign(data, data + output.get_size());
    return image;
}

int64_t InverseEngine::max_batch() const { return impl_->max_batch; }

std::string InverseEngine::describe() const {
    return std::string("OpenVINO ") + ov::get_openvino_version().buildNumber + ", CPU, inference precision f32";
}

}  // namespace irevnet
