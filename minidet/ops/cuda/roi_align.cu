// RoIAlign on the GPU, the arithmetic of minidet/_ext/roi_align.pyx (see minidet/ops/roi_align.py for
// the formulas). Compiled with -Dscalar_t=float or double.
//
// Every product goes through the _rn intrinsics, so that no fused multiply-add changes a rounding
// (NVRTC fuses a * b + c by default; the CPU build and torchvision round the product first), and
// CUDA's default IEEE division matches the CPU's. The forward is therefore bit for bit the CPU's.
#include "roi_bins.cuh"

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Start and bin size of one RoI along one axis (corners first, last); returns the points per bin.
__device__ __forceinline__ int axis_geometry(scalar_t first, scalar_t last, scalar_t scale, int pooled,
                                             int sampling_ratio, bool aligned, scalar_t* start,
                                             scalar_t* bin_size) {
    const scalar_t offset = aligned ? (scalar_t)0.5 : (scalar_t)0;
    const scalar_t s = mul_rn(first, scale) - offset;
    scalar_t length = (mul_rn(last, scale) - offset) - s;
    if (!aligned && length < 1) length = 1;  // malformed RoIs count as one cell when not aligned
    *start = s;
    *bin_size = length / (scalar_t)pooled;
    return sampling_ratio > 0 ? sampling_ratio : (int)ceil(length / (scalar_t)pooled);
}

// Point i of bin p along one axis: false when it reads nothing, else its cells lo, hi and weights.
__device__ __forceinline__ bool axis_point(scalar_t start, scalar_t bin_size, int p, int i, int grid, int size,
                                           int* lo, int* hi, scalar_t* l, scalar_t* h) {
    scalar_t v = (start + mul_rn((scalar_t)p, bin_size)) + mul_rn((scalar_t)i + (scalar_t)0.5, bin_size) / (scalar_t)grid;
    if (!(v >= -1 && v <= size)) return false;  // also NaN
    if (v <= 0) v = 0;
    int low = (int)v;
    if (low >= size - 1) {
        low = size - 1;
        *hi = low;
        v = (scalar_t)low;
    } else {
        *hi = low + 1;
    }
    *lo = low;
    *l = v - (scalar_t)low;
    *h = 1 - *l;
    return true;
}

// The sampling grid of one RoI: gh x gw points in every bin, from these starts and bin sizes.
struct SamplingGrid {
    scalar_t start_h, bin_h, start_w, bin_w;
    int gh, gw;
};

__device__ __forceinline__ SamplingGrid sampling_grid(const scalar_t* roi, scalar_t spatial_scale, int pooled_h,
                                                      int pooled_w, int sampling_ratio, bool aligned) {
    SamplingGrid g;
    g.gh = axis_geometry(roi[2], roi[4], spatial_scale, pooled_h, sampling_ratio, aligned, &g.start_h, &g.bin_h);
    g.gw = axis_geometry(roi[1], roi[3], spatial_scale, pooled_w, sampling_ratio, aligned, &g.start_w, &g.bin_w);
    return g;
}

// For each point of bin (ph, pw) that reads the (height, width) plane, in the order (iy, ix):
// visit(cells, weights), its four cells (offsets into the plane) and their weights w1..w4.
template <typename Visit>
__device__ __forceinline__ void for_each_point(const SamplingGrid& g, int ph, int pw, int height, int width,
                                               Visit visit) {
    for (int iy = 0; iy < g.gh; ++iy) {
        int ylo, yhi;
        scalar_t yl, yh;
        if (!axis_point(g.start_h, g.bin_h, ph, iy, g.gh, height, &ylo, &yhi, &yl, &yh)) continue;
        for (int ix = 0; ix < g.gw; ++ix) {
            int xlo, xhi;
            scalar_t xl, xh;
            if (!axis_point(g.start_w, g.bin_w, pw, ix, g.gw, width, &xlo, &xhi, &xl, &xh)) continue;
            const int cells[4] = {ylo * width + xlo, ylo * width + xhi, yhi * width + xlo, yhi * width + xhi};
            const scalar_t weights[4] = {mul_rn(yh, xh), mul_rn(yh, xl), mul_rn(yl, xh), mul_rn(yl, xl)};
            visit(cells, weights);
        }
    }
}

// The arguments of both kernels between their input and their output: rois (R, 5) = [n, x1, y1,
// x2, y2], the element count R C PH PW, and the geometry of minidet/ops/roi_align.py.
#define ROI_ALIGN_ARGS                                                                            \
    const scalar_t* __restrict__ rois, long long total, int num_images, int channels, int height, \
        int width, int pooled_h, int pooled_w, scalar_t spatial_scale, int sampling_ratio, int aligned

// One thread per output y[r, c, ph, pw]; x (N, C, H, W).
extern "C" __global__ void roi_align_forward(const scalar_t* __restrict__ x, ROI_ALIGN_ARGS,
                                             scalar_t* __restrict__ y) {
    CUDA_KERNEL_LOOP(t, total) {
        const RoIBin b = roi_bin_of(t, rois, channels, pooled_h, pooled_w);
        if (b.n < 0 || b.n >= num_images) {  // not an image of x: 0, and no gradient
            y[t] = 0;
            continue;
        }
        const SamplingGrid g = sampling_grid(b.roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned != 0);
        const scalar_t* plane = x + b.plane * height * width;
        scalar_t sum = 0;
        for_each_point(g, b.ph, b.pw, height, width, [&](const int* cells, const scalar_t* w) {
            sum = sum + (((mul_rn(w[0], plane[cells[0]]) + mul_rn(w[1], plane[cells[1]])) +
                          mul_rn(w[2], plane[cells[2]])) + mul_rn(w[3], plane[cells[3]]));
        });
        y[t] = sum / (scalar_t)max(g.gh * g.gw, 1);
    }
}

// One thread per dy[r, c, ph, pw]: each point of its bin adds dy * w / count to its four cells of
// dx (N, C, H, W), which starts at zero. atomicAdd, because bins and RoIs share cells.
extern "C" __global__ void roi_align_backward(const scalar_t* __restrict__ dy, ROI_ALIGN_ARGS,
                                              scalar_t* __restrict__ dx) {
    CUDA_KERNEL_LOOP(t, total) {
        const RoIBin b = roi_bin_of(t, rois, channels, pooled_h, pooled_w);
        if (b.n < 0 || b.n >= num_images) continue;
        const SamplingGrid g = sampling_grid(b.roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned != 0);
        const scalar_t count = (scalar_t)(g.gh * g.gw);
        const scalar_t grad = dy[t];
        scalar_t* plane = dx + b.plane * height * width;
        for_each_point(g, b.ph, b.pw, height, width, [&](const int* cells, const scalar_t* w) {
            for (int k = 0; k < 4; ++k) atomicAdd(plane + cells[k], mul_rn(grad, w[k]) / count);
        });
    }
}
