// irevnet_invert: z (.npy) -> image, through a bundle's inverse (TensorRT engine or OpenVINO on
// the CPU, as configured; see inverse_engine.h).
//
//   irevnet_invert BUNDLE_DIR [z.npy] [out_prefix]
//
// Reads BUNDLE_DIR/manifest.json, then only the files it lists for the inverse, each checked
// against its sha256 before use (a link out of the bundle is refused); inverts z (default: the
// bundle's sample_z.npy), de-normalises with the manifest's mean/std and writes out_prefix.npy
// (pixels in [0, 1], float32, (N, C, H, W)) and out_prefix_<n>.ppm/.pgm per image.
#include <chrono>
#include <iostream>
#include <string>

#include "irevnet/inverse_engine.h"
#include "irevnet/io.h"

int main(int argc, char** argv) {
    if (argc < 2 || argc > 4) {
        std::cerr << "usage: irevnet_invert BUNDLE_DIR [z.npy] [out_prefix]\n";
        return 2;
    }
    const std::string bundle = argv[1];
    const std::string z_path = argc > 2 ? argv[2] : bundle + "/" + irevnet::SAMPLE_Z;
    const std::string prefix = argc > 3 ? argv[3] : "reconstruction";
    try {
        irevnet::Manifest manifest = irevnet::Manifest::load(bundle);
        // the bundle's own sample is one of its listed files, checked like the graph
        irevnet::Tensor z = argc > 2 ? irevnet::read_npy(z_path)
                                     : irevnet::parse_npy(irevnet::read_verified(bundle, manifest, irevnet::SAMPLE_Z), z_path);
        if (z.shape.size() != 4 || std::vector<int64_t>(z.shape.begin() + 1, z.shape.end()) != manifest.z_shape) {
            std::cerr << "error: " << z_path << " does not have the bundle's z shape (N, " << manifest.z_shape[0] << ", "
                      << manifest.z_shape[1] << ", " << manifest.z_shape[2] << ")\n";
            return 2;
        }
        irevnet::InverseEngine engine(bundle, manifest);
        std::cerr << "bundle: " << manifest.precision << "; " << engine.describe() << "\n";
        auto start = std::chrono::steady_clock::now();
        irevnet::Tensor image = engine.run(z);
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        irevnet::Tensor pixels = irevnet::denormalize(image, manifest.mean, manifest.std);
        irevnet::write_npy(prefix + ".npy", pixels);
        const char* ext = pixels.shape[1] == 3 ? ".ppm" : ".pgm";
        for (int64_t n = 0; n < pixels.shape[0]; ++n) irevnet::write_pnm(prefix + "_" + std::to_string(n) + ext, pixels, n);
        std::cout << "inverted " << z.shape[0] << " z in " << ms << " ms (first call, includes warm-up); wrote "
                  << prefix << ".npy and " << pixels.shape[0] << " image(s)\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
