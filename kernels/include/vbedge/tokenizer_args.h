// Argument checks of the visual-tokenizer contract (docs/tokenizer.md) shared by the C++ CPU core,
// the CUDA engine and the CUDA binding, so that all three accept the same (mode, beam) and say the
// same thing when they do not.
//
// Host-only. The functions have internal linkage (static): every translation unit that includes
// this header keeps its own copy, so a check the CUDA binding runs in its g++-compiled code before
// calling the engine stays in that code (the linker cannot fold it into the nvcc-compiled copy).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace vbedge {

// Throws std::invalid_argument unless `beam` is accepted: exactly 1 in exact mode (which searches
// every leaf), 1..num_leaves in tree mode.
static inline void check_beam(bool exact_mode, int64_t beam, int64_t num_leaves) {
    if (exact_mode) {
        if (beam != 1) {
            throw std::invalid_argument("beam must be 1 in exact mode (exact searches every leaf), got " +
                                        std::to_string(beam));
        }
        return;
    }
    if (beam < 1 || beam > num_leaves) {
        throw std::invalid_argument("beam must be between 1 and branching**levels = " + std::to_string(num_leaves) +
                                    ", got " + std::to_string(beam));
    }
}

}  // namespace vbedge
