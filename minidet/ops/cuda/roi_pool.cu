// RoI max pooling on the GPU, the same arithmetic as minidet/_ext/roi_pool.pyx (see
// minidet/ops/roi_pool.py for the formulas). Compiled with -Dscalar_t=float or double.
//
// The bin edges use scalar_t products and quotients and C's round/floor/ceil, as the CPU does:
// no multiply is followed by an add on these lines, so no fused multiply-add can change a rounding,
// and CUDA's default (IEEE) division and round() (halves away from zero) match the C library.
#include "roi_bins.cuh"

// Edges [lo, hi) of bin p along one axis of a RoI whose corners are first, last (image pixels).
__device__ __forceinline__ void roi_bin(scalar_t first, scalar_t last, scalar_t scale, int p,
                                        int pooled, int size, int* lo, int* hi) {
    const int start = (int)round(first * scale);
    const int end = (int)round(last * scale);
    const int length = max(end - start + 1, 1);
    const scalar_t bin_size = (scalar_t)length / (scalar_t)pooled;
    *lo = min(max((int)floor((scalar_t)p * bin_size) + start, 0), size);
    *hi = min(max((int)ceil((scalar_t)(p + 1) * bin_size) + start, 0), size);
}

// One thread per output y[r, c, ph, pw]; x (N, C, H, W), rois (R, 5) = [n, x1, y1, x2, y2].
extern "C" __global__ void roi_pool_forward(const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ rois,
                                            long long total, int num_images, int channels,
                                            int height, int width,
                                            int pooled_h, int pooled_w, scalar_t spatial_scale,
                                            scalar_t* __restrict__ y, int* __restrict__ argmax) {
    CUDA_KERNEL_LOOP(t, total) {
        const RoIBin b = roi_bin_of(t, rois, channels, pooled_h, pooled_w);
        int h_lo = 0, h_hi = 0, w_lo = 0, w_hi = 0;
        if (b.n >= 0 && b.n < num_images) {  // else not an image of x: pooled as empty, sends no gradient
            roi_bin(b.roi[2], b.roi[4], spatial_scale, b.ph, pooled_h, height, &h_lo, &h_hi);
            roi_bin(b.roi[1], b.roi[3], spatial_scale, b.pw, pooled_w, width, &w_lo, &w_hi);
        }
        if (h_hi <= h_lo || w_hi <= w_lo) {  // empty bin: 0, and no input receives its gradient
            y[t] = 0;
            argmax[t] = -1;
            continue;
        }
        const scalar_t* plane = x + b.plane * height * width;
        int best = h_lo * width + w_lo;
        scalar_t best_value = plane[best];
        for (int h = h_lo; h < h_hi; ++h) {
            for (int w = w_lo; w < w_hi; ++w) {
                const int idx = h * width + w;
                if (plane[idx] > best_value) {  // strictly greater: the first maximum wins ties
                    best_value = plane[idx];
                    best = idx;
                }
            }
        }
        y[t] = best_value;
        argmax[t] = best;
    }
}

// One thread per dy[r, c, ph, pw]: dx[batch[r], c].flat[argmax] += dy. dx (N, C, H*W) starts at zero.
// atomicAdd, because bins of one RoI may share a cell and RoIs overlap; see minidet/ops/roi_pool.py
// for why this scatter rather than the original layer's gather.
extern "C" __global__ void roi_pool_backward(const scalar_t* __restrict__ dy,
                                             const int* __restrict__ argmax,
                                             const int* __restrict__ batch,
                                             long long total, int channels, int plane_size,
                                             int bins, scalar_t* __restrict__ dx) {
    CUDA_KERNEL_LOOP(t, total) {
        const int a = argmax[t];
        if (a < 0) continue;  // empty bin
        const long long rc = t / bins;  // r * channels + c
        const int c = (int)(rc % channels);
        const long long r = rc / channels;
        atomicAdd(dx + ((long long)batch[r] * channels + c) * plane_size + a, dy[t]);
    }
}
