// A CPU emulation of the CUDA thread grid, enough for xpnn's kernels: one thread per output
// element, no shared memory, no __syncthreads. The kernel source is compiled unchanged by the
// host C++ compiler; a launch runs every (block, thread) pair of the grid in turn, with
// blockIdx / threadIdx / blockDim / gridDim set as the GPU would set them.
#pragma once
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static dim3 blockIdx, threadIdx, blockDim, gridDim;

// CUDA has float and double overloads of these; so has <cmath>, in std:: only (the global
// exp(float) of <math.h> would compute in double).
using std::exp;
using std::log;
using std::sqrt;

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__ __attribute__((always_inline))   // after __device__, which is inline

// Call kernel k with its arguments given as an array of pointers to their values: the same
// convention as cuLaunchKernel and cupy.RawKernel, so the Python glue passes the same tuple.
template <typename... Args, std::size_t... I>
static void emu_call(void (*k)(Args...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<Args>*>(args[I])...);
}

template <typename... Args>
static void emu_launch(void (*k)(Args...), unsigned grid, unsigned block, void** args) {
    gridDim.x = grid;
    blockDim.x = block;
    // Blocks run last to first: a kernel whose result depended on block order would show it.
    for (unsigned b = grid; b-- > 0;) {
        blockIdx.x = b;
        for (unsigned t = 0; t < block; ++t) {
            threadIdx.x = t;
            emu_call(k, args, std::index_sequence_for<Args...>{});
        }
    }
}

// CuPy compiles every kernel with -ftz=true: float32 arithmetic and comparisons treat
// subnormal inputs as zero and flush subnormal results. The CuPy test double models it by
// running a float32 kernel with the x86 MXCSR's flush-to-zero and denormals-are-zero bits set
// (they act on double too, so a kernel with double parameters runs without). Returns the
// previous MXCSR, for emu_ftz_end; 0xFFFFFFFF where this CPU has no such bits (not modelled).
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
extern "C" unsigned emu_ftz_begin() {
    const unsigned previous = _mm_getcsr();
    _mm_setcsr(previous | 0x8000u /* FTZ */ | 0x0040u /* DAZ */);
    return previous;
}
extern "C" void emu_ftz_end(unsigned previous) { _mm_setcsr(previous); }
#else
extern "C" unsigned emu_ftz_begin() { return 0xFFFFFFFFu; }
extern "C" void emu_ftz_end(unsigned) {}
#endif

#define EMU_EXPORT(name) \
    extern "C" void emu_##name(unsigned grid, unsigned block, void** args) { \
        emu_launch(name, grid, block, args); }
