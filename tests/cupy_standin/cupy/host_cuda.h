// The CUDA built-ins that minidet's kernels use, for compiling a .cu file as host C++ with g++.
//
// A launch runs one block after another. Within a block, a kernel without __syncthreads runs its
// threads one after another to completion; a kernel with it (HOST_CUDA_BARRIERS defined) runs each
// thread as a fiber on its own stack, and a barrier switches to the next fiber, so every thread of
// the block reaches a barrier before any passes it. Everything runs on one OS thread.
//
// What a GPU does differently and the host reproduces here:
// - HOST_CUDA_FTZ (float kernels): CuPy compiles every kernel with -ftz=true, so single-precision
//   arithmetic and comparisons treat subnormal inputs as zero and flush subnormal results to zero.
//   The launch sets the x86 MXCSR bits FTZ and DAZ, which do the same to SSE arithmetic and
//   comparisons, and restores them afterwards (loads, stores and moves keep subnormals on both).
// - float atomicAdd flushes subnormal operands and results whatever -ftz says (PTX atom.add.f32).
// - min/max of floating operands are fminf/fmaxf: a NaN operand gives the other operand.
// - HOST_CUDA_SHUFFLE: the blocks of a grid, the threads of a block and, between barriers, the
//   order in which the fibers resume are a fresh pseudo-random permutation at every launch, so a
//   result that depends on the order of threads (a race, a missing atomic) changes from run to run.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <ucontext.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

// float and double overloads, as in CUDA's math library (C's ::exp and the like take doubles only)
using std::ceil;
using std::exp;
using std::fabs;
using std::floor;
using std::isfinite;
using std::isnan;
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

// CUDA's min/max take mixed operands and return the promoted type; on floating operands they are
// fminf/fmaxf (fmin/fmax), which return the other operand when one is NaN.
template <class T> inline T host_cuda_min(T a, T b, std::true_type) { return std::fmin(a, b); }
template <class T> inline T host_cuda_min(T a, T b, std::false_type) { return b < a ? b : a; }
template <class T> inline T host_cuda_max(T a, T b, std::true_type) { return std::fmax(a, b); }
template <class T> inline T host_cuda_max(T a, T b, std::false_type) { return a < b ? b : a; }
template <class A, class B> inline auto min(A a, B b) -> decltype(a + b) {
    using T = decltype(a + b);
    return host_cuda_min<T>(T(a), T(b), std::is_floating_point<T>{});
}
template <class A, class B> inline auto max(A a, B b) -> decltype(a + b) {
    using T = decltype(a + b);
    return host_cuda_max<T>(T(a), T(b), std::is_floating_point<T>{});
}

// Round-to-nearest intrinsics, never fused into a multiply-add: the empty asm hides the product
// (or sum) from the optimiser, so that even a build with -ffp-contract=fast cannot contract it.
template <class T> inline T host_cuda_opaque(T v) {
#if defined(__x86_64__)
    asm("" : "+x"(v));
#else
    asm volatile("" : "+r"(v));
#endif
    return v;
}
inline float __fmul_rn(float a, float b) { return host_cuda_opaque(a * b); }
inline double __dmul_rn(double a, double b) { return host_cuda_opaque(a * b); }
inline float __fadd_rn(float a, float b) { return host_cuda_opaque(a + b); }
inline double __dadd_rn(double a, double b) { return host_cuda_opaque(a + b); }
inline float __fsub_rn(float a, float b) { return host_cuda_opaque(a - b); }
inline double __dsub_rn(double a, double b) { return host_cuda_opaque(a - b); }

inline float host_cuda_flush(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }

inline float atomicAdd(float* address, float value) {
    const float old = *address;
    *address = host_cuda_flush(host_cuda_opaque(host_cuda_flush(old) + host_cuda_flush(value)));
    return old;
}
template <class T, class V> inline T atomicAdd(T* address, V value) {
    const T old = *address;
    *address = old + value;
    return old;
}

namespace host_cuda {

#ifdef HOST_CUDA_SHUFFLE
// A new permutation of 0..count-1 in `order`, from a xorshift generator seeded per launch.
static std::uint64_t shuffle_state = 0x9E3779B97F4A7C15ull;
inline std::uint64_t next_random() {
    shuffle_state ^= shuffle_state << 13;
    shuffle_state ^= shuffle_state >> 7;
    shuffle_state ^= shuffle_state << 17;
    return shuffle_state;
}
inline unsigned long long gcd(unsigned long long a, unsigned long long b) {
    while (b) { const unsigned long long t = a % b; a = b; b = t; }
    return a;
}
inline void permutation(unsigned int* order, unsigned int count) {
    for (unsigned int k = 0; k < count; ++k) order[k] = k;
    for (unsigned int k = count; k > 1; --k) {
        const unsigned int other = (unsigned int)(next_random() % k);
        const unsigned int t = order[k - 1];
        order[k - 1] = order[other];
        order[other] = t;
    }
}
#endif

// The thread order of one block (identity unless shuffled); grown to the largest block.
inline unsigned int* thread_order(unsigned int count) {
    static unsigned int* order = nullptr;
    static unsigned int capacity = 0;
    if (count > capacity) {
        std::free(order);
        order = static_cast<unsigned int*>(std::malloc(count * sizeof(unsigned int)));
        capacity = count;
    }
#ifdef HOST_CUDA_SHUFFLE
    permutation(order, count);
#else
    for (unsigned int k = 0; k < count; ++k) order[k] = k;
#endif
    return order;
}

inline host_cuda_dim3 unflatten(unsigned int t, host_cuda_dim3 extent) {
    return {t % extent.x, t / extent.x % extent.y, t / (extent.x * extent.y)};
}

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
        fiber.index = unflatten(t, blockDim);
        fiber.done = false;
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = stacks + t * fiber_stack_bytes;
        fiber.context.uc_stack.ss_size = fiber_stack_bytes;
        fiber.context.uc_link = &scheduler;
        makecontext(&fiber.context, fiber_main, 0);
    }
    for (unsigned int live = count; live > 0;) {
        const unsigned int* order = thread_order(count);  // a new order every round when shuffled
        for (unsigned int k = 0; k < count; ++k) {
            Fiber& fiber = fibers[order[k]];
            if (fiber.done) continue;
            running = &fiber;
            threadIdx = fiber.index;
            swapcontext(&scheduler, &fiber.context);
            live -= fiber.done;
        }
    }
}
#else
inline void run_block(void (*body)(void*), void* state) {
    const unsigned int count = blockDim.x * blockDim.y * blockDim.z;
    const unsigned int* order = thread_order(count);
    for (unsigned int k = 0; k < count; ++k) {
        threadIdx = unflatten(order[k], blockDim);
        body(state);
    }
}
#endif

// While alive, float arithmetic flushes subnormals as under -ftz=true (with HOST_CUDA_FTZ defined).
struct FlushToZero {
#if defined(__x86_64__) && defined(HOST_CUDA_FTZ)
    unsigned int saved = _mm_getcsr();
    FlushToZero() { _mm_setcsr(saved | 0x8040); }  // FTZ (bit 15) and DAZ (bit 6)
    ~FlushToZero() { _mm_setcsr(saved); }
#endif
};

// Run `body(state)` once per thread of a grid x block launch; `seed` picks the shuffled orders.
inline void launch(host_cuda_dim3 grid, host_cuda_dim3 block, void (*body)(void*), void* state,
                   std::uint64_t seed) {
    FlushToZero flush_to_zero;
    gridDim = grid;
    blockDim = block;
#ifdef HOST_CUDA_SHUFFLE
    shuffle_state = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    // A random start and an odd stride coprime with the count visit every block once, in a new order.
    const unsigned long long start = blocks ? next_random() % blocks : 0;
    unsigned long long stride = blocks ? (next_random() % blocks) | 1 : 1;
    while (blocks > 1 && gcd(stride, blocks) != 1) stride += 2;
    for (unsigned long long k = 0; k < blocks; ++k) {
        const unsigned long long b = (start + k * stride) % blocks;
        blockIdx = {(unsigned int)(b % grid.x), (unsigned int)(b / grid.x % grid.y),
                    (unsigned int)(b / ((unsigned long long)grid.x * grid.y))};
        run_block(body, state);
    }
#else
    (void)seed;
    for (blockIdx.z = 0; blockIdx.z < grid.z; ++blockIdx.z)
        for (blockIdx.y = 0; blockIdx.y < grid.y; ++blockIdx.y)
            for (blockIdx.x = 0; blockIdx.x < grid.x; ++blockIdx.x) run_block(body, state);
#endif
}

}  // namespace host_cuda

#ifdef HOST_CUDA_BARRIERS
#define __syncthreads() host_cuda::syncthreads()
#endif
