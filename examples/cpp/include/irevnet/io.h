// Host-side helpers of the irevnet C++ example: .npy files, the bundle manifest, pixels.
// No TensorRT or CUDA here, so this part builds and is tested on any machine.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace irevnet {

// The sample z every bundle holds (listed and hashed in its manifest like the graphs).
inline const std::string SAMPLE_Z = "sample_z.npy";

// A float32 array in C order, as numpy saves it.
struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
    int64_t size() const;
};

// Reads a .npy file of little-endian float32 in C order (numpy's default); throws std::runtime_error.
Tensor read_npy(const std::string& path);
// The same from bytes already read (`path` names them in messages).
Tensor parse_npy(const std::string& bytes, const std::string& path);
// Writes a version 1.0 .npy file that np.load reads back exactly.
void write_npy(const std::string& path, const Tensor& tensor);

// A parsed JSON value: enough of JSON for the manifest (objects, arrays, strings, numbers, bools, null).
class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };
    static Json parse(const std::string& text);  // throws std::runtime_error on malformed input
    static Json parse_file(const std::string& path);

    Type type() const { return type_; }
    bool has(const std::string& key) const;
    const Json& operator[](const std::string& key) const;  // throws when absent
    const Json& operator[](size_t index) const;
    size_t size() const;
    double number() const;
    const std::string& string() const;
    std::vector<double> numbers() const;  // an array of numbers
    const std::map<std::string, Json>& items() const;  // an object's members; throws for other types

private:
    Type type_ = Type::Null;
    bool bool_ = false;
    double number_ = 0.0;
    std::string string_;
    std::vector<Json> array_;
    std::map<std::string, Json> object_;
    friend class JsonParser;
};

// What the C++ side needs from manifest.json.
struct Manifest {
    std::string precision;
    std::vector<double> mean, std;       // per channel: pixel = image * std + mean
    std::vector<int64_t> z_shape;        // (C, H, W) of z, without the batch
    std::vector<int64_t> image_shape;    // (C, H, W) of the image
    int64_t max_batch = 0;
    std::string inverse_graph;           // graphs.inverse.file: the ONNX graph inside the bundle
    std::vector<std::string> inverse_files;  // graphs.inverse.files: the graph and its external data
    std::string inverse_engine;          // tensorrt.engines.inverse.file, empty if not built
    std::string tensorrt_version;        // version the engines were built with
    std::map<std::string, std::string> sha256;  // files: relative path -> hex digest
    // Reads BUNDLE_DIR/manifest.json; every file name it uses must be a plain relative path that
    // `files` lists (throws std::runtime_error otherwise).
    static Manifest load(const std::string& bundle_dir);
};

// The bytes of a file the manifest lists, read once and checked against its recorded sha256, so
// what runs is what `irevnet verify` hashed. Refuses a name the manifest does not list, a path
// that resolves outside the bundle (a link out of it), and anything but a regular file.
std::string read_verified(const std::string& bundle_dir, const Manifest& manifest, const std::string& name);

// SHA-256 of bytes, as lowercase hex (OpenSSL's libcrypto).
std::string sha256_hex(const std::string& bytes);

// image (N, C, H, W), normalised -> pixel intensities in [0, 1] (not clipped).
Tensor denormalize(const Tensor& image, const std::vector<double>& mean, const std::vector<double>& std);

// Writes image n of an (N, C, H, W) [0, 1] tensor as binary PPM (3 channels) or PGM (1 channel).
void write_pnm(const std::string& path, const Tensor& pixels, int64_t n);

}  // namespace irevnet
