#include "irevnet/io.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace irevnet {

int64_t Tensor::size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

// ---------------------------------------------------------------------------------------------
// .npy: magic "\x93NUMPY", version, header length, a Python dict literal, then the raw data.

static std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

static std::string header_value(const std::string& header, const std::string& key) {
    size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) throw std::runtime_error("npy header lacks '" + key + "'");
    size_t colon = header.find(':', at);
    size_t start = colon == std::string::npos ? colon : header.find_first_not_of(" ", colon + 1);
    if (start == std::string::npos) throw std::runtime_error("npy header has no value for '" + key + "'");
    size_t end = header[start] == '(' ? header.find(')', start) + 1 : header.find_first_of(",}", start);
    return header.substr(start, end - start);
}

Tensor read_npy(const std::string& path) { return parse_npy(read_file(path), path); }

Tensor parse_npy(const std::string& bytes, const std::string& path) {
    if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error(path + ": not a .npy file");
    uint8_t major = static_cast<uint8_t>(bytes[6]);
    size_t header_len, offset;
    if (major == 1) {
        header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
        offset = 10;
    } else {
        if (bytes.size() < 12) throw std::runtime_error(path + ": truncated .npy header");
        header_len = 0;
        for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
        offset = 12;
    }
    if (bytes.size() < offset + header_len) throw std::runtime_error(path + ": truncated .npy header");
    std::string header = bytes.substr(offset, header_len);
    std::string descr = header_value(header, "descr");
    if (descr != "'<f4'") throw std::runtime_error(path + ": dtype " + descr + ", expected float32 ('<f4')");
    if (header_value(header, "fortran_order") != "False") throw std::runtime_error(path + ": Fortran order is not supported");
    Tensor t;
    std::string dims = header_value(header, "shape");  // "(1, 256, 4, 4)" or "(5,)"
    std::string number;
    for (char c : dims) {
        if (std::isdigit(static_cast<unsigned char>(c))) {
            number += c;
        } else if (!number.empty()) {
            // no dimension exceeds the bytes present, so the product below cannot overflow unnoticed
            if (number.size() > 18 || static_cast<size_t>(std::stoll(number)) > bytes.size())
                throw std::runtime_error(path + ": a dimension of " + number.substr(0, 20) + " is more than the file holds");
            t.shape.push_back(std::stoll(number));
            number.clear();
        }
    }
    size_t elements = 1;
    for (int64_t d : t.shape) {
        if (d != 0 && elements > bytes.size() / static_cast<size_t>(d)) throw std::runtime_error(path + ": data size does not match the shape");
        elements *= static_cast<size_t>(d);
    }
    size_t data_bytes = elements * sizeof(float);
    if (bytes.size() - offset - header_len != data_bytes) throw std::runtime_error(path + ": data size does not match the shape");
    t.data.resize(static_cast<size_t>(t.size()));
    std::memcpy(t.data.data(), bytes.data() + offset + header_len, data_bytes);
    return t;
}

void write_npy(const std::string& path, const Tensor& t) {
    std::string shape = "(";
    for (size_t i = 0; i < t.shape.size(); ++i) shape += std::to_string(t.shape[i]) + (t.shape.size() == 1 ? "," : (i + 1 < t.shape.size() ? ", " : ""));
    shape += ")";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');  // numpy aligns the data to 64 bytes
    header += '\n';
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error("cannot write " + path);
    uint16_t len = static_cast<uint16_t>(header.size());
    out.write("\x93NUMPY\x01\x00", 8);
    char le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    out.write(le, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * sizeof(float)));
}

// ---------------------------------------------------------------------------------------------
// JSON: a recursive-descent parser over the standard grammar.

class JsonParser {
public:
    explicit JsonParser(const std::string& text) : s_(text) {}

    Json document() {
        Json value = parse_value();
        skip_space();
        if (i_ != s_.size()) fail("trailing characters");
        return value;
    }

private:
    const std::string& s_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("manifest JSON: " + what + " at offset " + std::to_string(i_));
    }
    void skip_space() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    char peek() {
        skip_space();
        if (i_ >= s_.size()) fail("unexpected end");
        return s_[i_];
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++i_;
    }
    bool consume(const char* word) {
        size_t n = std::strlen(word);
        if (s_.compare(i_, n, word) != 0) return false;
        i_ += n;
        return true;
    }

    Json parse_value() {
        Json v;
        char c = peek();
        if (c == '{') {
            v.type_ = Json::Type::Object;
            ++i_;
            if (peek() == '}') { ++i_; return v; }
            for (;;) {
                std::string key = parse_string();
                expect(':');
                v.object_[key] = parse_value();
                if (peek() == ',') { ++i_; continue; }
                expect('}');
                return v;
            }
        }
        if (c == '[') {
            v.type_ = Json::Type::Array;
            ++i_;
            if (peek() == ']') { ++i_; return v; }
            for (;;) {
                v.array_.push_back(parse_value());
                if (peek() == ',') { ++i_; continue; }
                expect(']');
                return v;
            }
        }
        if (c == '"') {
            v.type_ = Json::Type::String;
            v.string_ = parse_string();
            return v;
        }
        if (consume("true")) { v.type_ = Json::Type::Bool; v.bool_ = true; return v; }
        if (consume("false")) { v.type_ = Json::Type::Bool; return v; }
        if (consume("null")) return v;
        size_t start = i_;
        while (i_ < s_.size() && std::strchr("+-0123456789.eE", s_[i_])) ++i_;
        if (start == i_) fail("unexpected character");
        v.type_ = Json::Type::Number;
        v.number_ = std::stod(s_.substr(start, i_ - start));
        return v;
    }

    std::string parse_string() {
        expect('"');
        std::string out;
        while (i_ < s_.size() && s_[i_] != '"') {
            char c = s_[i_++];
            if (c != '\\') { out += c; continue; }
            if (i_ >= s_.size()) fail("unfinished escape");
            char e = s_[i_++];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'u': {
                    if (i_ + 4 > s_.size()) fail("short \\u escape");
                    unsigned code = static_cast<unsigned>(std::stoul(s_.substr(i_, 4), nullptr, 16));
                    i_ += 4;
                    // UTF-8 for the basic plane (the manifest holds ASCII; this keeps others readable)
                    if (code < 0x80) out += static_cast<char>(code);
                    else if (code < 0x800) { out += static_cast<char>(0xC0 | (code >> 6)); out += static_cast<char>(0x80 | (code & 0x3F)); }
                    else { out += static_cast<char>(0xE0 | (code >> 12)); out += static_cast<char>(0x80 | ((code >> 6) & 0x3F)); out += static_cast<char>(0x80 | (code & 0x3F)); }
                    break;
                }
                default: out += e;  // \" \\ \/
            }
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        return out;
    }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }
Json Json::parse_file(const std::string& path) { return parse(read_file(path)); }

const std::map<std::string, Json>& Json::items() const {
    if (type_ != Type::Object) throw std::runtime_error("manifest: expected an object");
    return object_;
}

bool Json::has(const std::string& key) const { return type_ == Type::Object && object_.count(key) > 0; }

const Json& Json::operator[](const std::string& key) const {
    auto it = object_.find(key);
    if (type_ != Type::Object || it == object_.end()) throw std::runtime_error("manifest lacks \"" + key + "\"");
    return it->second;
}

const Json& Json::operator[](size_t index) const {
    if (type_ != Type::Array || index >= array_.size()) throw std::runtime_error("manifest array index out of range");
    return array_[index];
}

size_t Json::size() const { return type_ == Type::Array ? array_.size() : object_.size(); }

double Json::number() const {
    if (type_ != Type::Number) throw std::runtime_error("manifest: expected a number");
    return number_;
}

const std::string& Json::string() const {
    if (type_ != Type::String) throw std::runtime_error("manifest: expected a string");
    return string_;
}

std::vector<double> Json::numbers() const {
    std::vector<double> out;
    for (size_t i = 0; i < size(); ++i) out.push_back((*this)[i].number());
    return out;
}

static std::vector<int64_t> feature_shape(const Json& io) {
    std::vector<int64_t> shape;
    const Json& dims = io["shape"];
    for (size_t i = 1; i < dims.size(); ++i) shape.push_back(static_cast<int64_t>(dims[i].number()));  // skip "N"
    return shape;
}

// A file name of the manifest must stay inside the bundle: relative, no "..", "." or empty parts.
static void check_relative(const std::string& name) {
    bool plain = !name.empty() && name[0] != '/' && name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
    size_t start = 0;
    while (plain && start <= name.size()) {
        size_t end = name.find('/', start);
        std::string part = name.substr(start, end == std::string::npos ? std::string::npos : end - start);
        plain = part != "" && part != "." && part != "..";
        if (end == std::string::npos) break;
        start = end + 1;
    }
    if (!plain) throw std::runtime_error("manifest: " + name.substr(0, 80) + " is not a plain relative path inside the bundle; refused");
}

Manifest Manifest::load(const std::string& bundle_dir) {
    Json j = Json::parse_file(bundle_dir + "/manifest.json");
    int schema = static_cast<int>(j["schema_version"].number());
    // schema 2 moved the graphs' weights into one shared file; nothing this example reads changed
    if (schema > 2) throw std::runtime_error("manifest schema " + std::to_string(schema) + " is newer than this example reads (2)");
    Manifest m;
    m.precision = j["precision"].string();
    m.mean = j["normalization"]["mean"].numbers();
    m.std = j["normalization"]["std"].numbers();
    m.z_shape = feature_shape(j["graphs"]["inverse"]["inputs"][0]);
    m.image_shape = feature_shape(j["graphs"]["inverse"]["outputs"][0]);
    m.max_batch = static_cast<int64_t>(j["batch"]["max"].number());
    m.inverse_graph = j["graphs"]["inverse"]["file"].string();
    const Json& files = j["graphs"]["inverse"]["files"];
    for (size_t i = 0; i < files.size(); ++i) m.inverse_files.push_back(files[i].string());
    if (j.has("tensorrt")) {
        m.inverse_engine = j["tensorrt"]["engines"]["inverse"]["file"].string();
        m.tensorrt_version = j["tensorrt"]["version"].string();
    }
    for (const auto& [name, digest] : j["files"].items()) m.sha256[name] = digest.string();
    std::vector<std::string> used = m.inverse_files;
    used.push_back(m.inverse_graph);
    if (!m.inverse_engine.empty()) used.push_back(m.inverse_engine);
    for (const std::string& name : used) {
        check_relative(name);
        if (!m.sha256.count(name))
            throw std::runtime_error("manifest: " + name + " is used but not listed in files (so not hashed); re-export the bundle");
    }
    if (std::find(m.inverse_files.begin(), m.inverse_files.end(), m.inverse_graph) == m.inverse_files.end())
        throw std::runtime_error("manifest: graphs.inverse.files does not hold the graph " + m.inverse_graph);
    return m;
}

// ---------------------------------------------------------------------------------------------
// Verified reads: the manifest's sha256 of every file, checked on the bytes that are then used.

std::string sha256_hex(const std::string& bytes) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("OpenSSL could not compute a sha256");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}

static std::string real_path(const std::string& path) {
    std::unique_ptr<char, decltype(&std::free)> resolved(realpath(path.c_str(), nullptr), &std::free);
    if (!resolved) throw std::runtime_error(path + " is missing (" + std::strerror(errno) + "); re-export the bundle");
    return resolved.get();
}

std::string read_verified(const std::string& bundle_dir, const Manifest& manifest, const std::string& name) {
    check_relative(name);
    auto digest = manifest.sha256.find(name);
    if (digest == manifest.sha256.end())
        throw std::runtime_error(name + " is not listed in the manifest's files, so it is not opened");
    const std::string root = real_path(bundle_dir);
    const std::string file = real_path(bundle_dir + "/" + name);
    if (file.compare(0, root.size() + 1, root + "/") != 0)
        throw std::runtime_error(bundle_dir + "/" + name + " is a link to " + file + ", outside the bundle; refused");
    // the resolved path, not following a link swapped in since, and never blocking on a FIFO
    int fd = open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + file + ": " + std::strerror(errno));
    std::string bytes;
    struct stat info {};
    bool regular = fstat(fd, &info) == 0 && S_ISREG(info.st_mode);
    if (regular) {
        bytes.resize(static_cast<size_t>(info.st_size));
        size_t done = 0;
        while (done < bytes.size()) {
            ssize_t n = read(fd, &bytes[done], bytes.size() - done);
            if (n <= 0) break;
            done += static_cast<size_t>(n);
        }
        bytes.resize(done);
    }
    close(fd);
    if (!regular) throw std::runtime_error(bundle_dir + "/" + name + " is not a regular file; re-export the bundle");
    if (sha256_hex(bytes) != digest->second)
        throw std::runtime_error(bundle_dir + "/" + name + " does not match its sha256 in the manifest (modified since "
                                 "it was verified); re-export or re-verify the bundle");
    return bytes;
}

// ---------------------------------------------------------------------------------------------

Tensor denormalize(const Tensor& image, const std::vector<double>& mean, const std::vector<double>& std) {
    if (image.shape.size() != 4) throw std::runtime_error("denormalize expects (N, C, H, W)");
    const int64_t n = image.shape[0], c = image.shape[1], hw = image.shape[2] * image.shape[3];
    if (static_cast<int64_t>(mean.size()) != c || static_cast<int64_t>(std.size()) != c)
        throw std::runtime_error("mean/std have " + std::to_string(mean.size()) + " channels, the image " + std::to_string(c));
    Tensor out{image.shape, std::vector<float>(image.data.size())};
    for (int64_t i = 0; i < n; ++i)
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t p = 0; p < hw; ++p) {
                size_t k = static_cast<size_t>((i * c + ch) * hw + p);
                out.data[k] = static_cast<float>(image.data[k] * std[static_cast<size_t>(ch)] + mean[static_cast<size_t>(ch)]);
            }
    return out;
}

void write_pnm(const std::string& path, const Tensor& pixels, int64_t n) {
    const int64_t c = pixels.shape[1], h = pixels.shape[2], w = pixels.shape[3];
    if (c != 1 && c != 3) throw std::runtime_error("PNM needs 1 or 3 channels, got " + std::to_string(c));
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error("cannot write " + path);
    out << (c == 3 ? "P6" : "P5") << "\n" << w << " " << h << "\n255\n";
    const float* base = pixels.data.data() + n * c * h * w;
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int64_t ch = 0; ch < c; ++ch) {
                // nearbyint rounds halves to even, as numpy does
                float v = std::nearbyint(std::clamp(base[(ch * h + y) * w + x], 0.0f, 1.0f) * 255.0f);
                out.put(static_cast<char>(static_cast<uint8_t>(v)));
            }
}

}  // namespace irevnet
