// The CUDA built-ins that minidet's kernels use, for compiling a .cu file as host C++ with g++.
//
// A launch runs one block after another. Within a block, a kernel without __syncthreads runs its
// threads one after another to completion; a kernel with it (HOST_CUDA_BARRIERS defined) runs each
// thread as a fiber on its own stack, and a barrier switches to the next fiber, so every thread of
// the block reaches a barrier before any passes it. Everything runs on one OS thread: atomics are
// plain read-modify-writes, and no race between threads can show.
#pragma once
#include <cmath>
#include <cstdlib>
#include <ucontext.h>

// float and double overloads, as in CUDA's math library (C's ::exp and the like take doubles only)
using std::ceil;
using std::exp;
using std::fabs;
using std::floor;
using std::log;
using std::round;
using std::sqrt;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // blocks run one at a time, so a function's statics are the block's shared memory

struct host_cuda_dim3 { unsigned int x, y, z; };
static host_cuda_dim3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's min/max take mixed operands and return the promoted type.
template <class A, class B> inline auto min(A a, B b) -> decltype(a + b) { return b < a ? b : a; }
template <class A, class B> inline auto max(A a, B b) -> decltype(a + b) { return a < b ? b : a; }

// Round-to-nearest products: host code compiled with -ffp-contract=off never fuses them either.
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

template <class T, class V> inline T atomicAdd(T* address, V value) {
    const T old = *address;
    *address = old + value;
    return old;
}

namespace host_cuda {

#ifdef HOST_CUDA_BARRIERS
const std::size_t fiber_stack_bytes = 256 * 1024;

struct Fiber {
    ucontext_t context;
    host_cuda_dim3 index;
    bool done;
};

static ucontext_t scheduler;
static Fiber* running;
static void (*thread_body)(void*);
static void* thread_state;

inline void fiber_main() {
    thread_body(thread_state);
    running->done = true;  // returning resumes the scheduler through uc_link
}

inline void syncthreads() { swapcontext(&running->context, &scheduler); }

// One block: start every thread, then resume each unfinished one in turn until all have returned.
// Each round takes every thread from one barrier to its next, as a barrier on the GPU does.
inline void run_block(void (*body)(void*), void* state) {
    static Fiber* fibers = nullptr;  // kept from block to block, grown to the largest block
    static char* stacks = nullptr;
    static unsigned int capacity = 0;
    const unsigned int count = blockDim.x * blockDim.y * blockDim.z;
    if (count > capacity) {
        std::free(fibers);
        std::free(stacks);
        fibers = static_cast<Fiber*>(std::malloc(count * sizeof(Fiber)));
        stacks = static_cast<char*>(std::malloc(count * fiber_stack_bytes));
        capacity = count;
    }
    thread_body = body;
    thread_state = state;
    for (unsigned int t = 0; t < count; ++t) {
        Fiber& fiber = fibers[t];
        fiber.index = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
        fiber.done = false;
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = stacks + t * fiber_stack_bytes;
        fiber.context.uc_stack.ss_size = fiber_stack_bytes;
        fiber.context.uc_link = &scheduler;
        makecontext(&fiber.context, fiber_main, 0);
    }
    for (unsigned int live = count; live > 0;) {
        for (unsigned int t = 0; t < count; ++t) {
            if (fibers[t].done) continue;
            running = &fibers[t];
            threadIdx = running->index;
            swapcontext(&scheduler, &running->context);
            live -= running->done;
        }
    }
}
#else
inline void run_block(void (*body)(void*), void* state) {
    for (threadIdx.z = 0; threadIdx.z < blockDim.z; ++threadIdx.z)
        for (threadIdx.y = 0; threadIdx.y < blockDim.y; ++threadIdx.y)
            for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) body(state);
}
#endif

// Run `body(state)` once per thread of a grid x block launch.
inline void launch(host_cuda_dim3 grid, host_cuda_dim3 block, void (*body)(void*), void* state) {
    gridDim = grid;
    blockDim = block;
    for (blockIdx.z = 0; blockIdx.z < grid.z; ++blockIdx.z)
        for (blockIdx.y = 0; blockIdx.y < grid.y; ++blockIdx.y)
            for (blockIdx.x = 0; blockIdx.x < grid.x; ++blockIdx.x) run_block(body, state);
}

}  // namespace host_cuda

#ifdef HOST_CUDA_BARRIERS
#define __syncthreads() host_cuda::syncthreads()
#endif
