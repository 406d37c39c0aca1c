// Host-side check of the example's I/O without TensorRT (used by tests/runtime/test_cpp_example.py):
//
//   io_check BUNDLE_DIR image.npy out_prefix
//
// Reads the manifest and a normalised image batch, de-normalises it exactly as irevnet_invert does
// and writes out_prefix.npy and out_prefix_0.ppm/.pgm, which the test compares with Python's.
#include <iostream>

#include "irevnet/io.h"

int main(int argc, char** argv) {
    if (argc != 4) {
        std::cerr << "usage: io_check BUNDLE_DIR image.npy out_prefix\n";
        return 2;
    }
    try {
        irevnet::Manifest manifest = irevnet::Manifest::load(argv[1]);
        irevnet::Tensor image = irevnet::read_npy(argv[2]);
        irevnet::Tensor pixels = irevnet::denormalize(image, manifest.mean, manifest.std);
        const std::string prefix = argv[3];
        irevnet::write_npy(prefix + ".npy", pixels);
        irevnet::write_pnm(prefix + (pixels.shape[1] == 3 ? "_0.ppm" : "_0.pgm"), pixels, 0);
        std::cout << manifest.precision << " " << manifest.max_batch << " " << manifest.z_shape[0] << "x"
                  << manifest.z_shape[1] << "x" << manifest.z_shape[2] << "\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
