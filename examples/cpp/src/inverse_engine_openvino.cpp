// InverseEngine on OpenVINO: the bundle's inverse graph (its weights in weights.bin beside it) on
// the CPU, from bytes checked against the manifest's sha256. The inference precision is set to f32: on CPUs with AVX-512 BF16 or AMX the plugin's
// default is bf16 for every node, coupling included, which costs the inverse its exactness
// (round trip ~2e-3 instead of ~1e-7). The graph's own types still apply (fp16 F in mixed
// bundles, int8 F in int8 bundles).
#include <openvino/openvino.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "irevnet/inverse_engine.h"

namespace irevnet {

struct InverseEngine::Impl {
    ov::CompiledModel compiled;
    ov::InferRequest request;
    int64_t max_batch = 0;
};

namespace {

// A folder of this process's own (0700), removed with everything in it when the object goes.
class PrivateFolder {
public:
    PrivateFolder() {
        const char* base = std::getenv("TMPDIR");
        std::string pattern = std::string(base && *base ? base : "/tmp") + "/irevnet_invert.XXXXXX";
        std::vector<char> buffer(pattern.begin(), pattern.end());
        buffer.push_back('\0');
        if (!mkdtemp(buffer.data())) throw std::runtime_error("cannot create a private folder under " + pattern);
        path_ = buffer.data();
    }
    ~PrivateFolder() {
        for (const std::string& name : written_) std::remove((path_ + "/" + name).c_str());
        for (auto it = folders_.rbegin(); it != folders_.rend(); ++it) rmdir(it->c_str());
        rmdir(path_.c_str());
    }
    PrivateFolder(const PrivateFolder&) = delete;
    PrivateFolder& operator=(const PrivateFolder&) = delete;

    // Writes bytes under the relative name (already checked by Manifest::load); returns the path.
    std::string write(const std::string& name, const std::string& bytes) {
        for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1)) {
            std::string folder = path_ + "/" + name.substr(0, slash);
            if (mkdir(folder.c_str(), 0700) == 0) folders_.push_back(folder);
        }
        std::string file = path_ + "/" + name;
        std::ofstream out(file, std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!out.flush()) throw std::runtime_error("cannot write " + file + " (disk full?)");
        written_.push_back(name);
        return file;
    }

private:
    std::string path_;
    std::vector<std::string> written_, folders_;
};

}  // namespace

InverseEngine::InverseEngine(const std::string& bundle_dir, const Manifest& manifest) : impl_(std::make_unique<Impl>()) {
    // Only the files the manifest lists for the inverse, each checked against its sha256 as it is
    // read; OpenVINO then reads those very bytes from a private copy (it resolves the graph's
    // external data by path, so the copy keeps the bundle's relative names). Nothing in the
    // bundle is opened by OpenVINO itself, so no file swapped in after the check can run.
    const std::string graph = bundle_dir + "/" + manifest.inverse_graph;
    try {
        PrivateFolder copy;
        std::string model_path;
        for (const std::string& name : manifest.inverse_files) {
            std::string written = copy.write(name, read_verified(bundle_dir, manifest, name));
            if (name == manifest.inverse_graph) model_path = written;
        }
        ov::Core core;
        std::shared_ptr<ov::Model> model = core.read_model(model_path);
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
