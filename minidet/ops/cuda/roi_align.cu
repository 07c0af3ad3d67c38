// RoIAlign on the GPU, the arithmetic of minidet/_ext/roi_align.pyx (see minidet/ops/roi_align.py for
// the formulas). Compiled with -Dscalar_t=float or double.
//
// Every product goes through the _rn intrinsics, so that no fused multiply-add changes a rounding
// (NVRTC fuses a * b + c by default; the CPU build and torchvision round the product first), and
// CUDA's default IEEE division matches the CPU's. The forward is therefore bit for bit the CPU's.

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

// One thread per output y[r, c, ph, pw]; x (N, C, H, W), rois (R, 5) = [n, x1, y1, x2, y2].
extern "C" __global__ void roi_align_forward(const scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ rois,
                                             long long total, int num_images, int channels,
                                             int height, int width, int pooled_h, int pooled_w,
                                             scalar_t spatial_scale, int sampling_ratio, int aligned,
                                             scalar_t* __restrict__ y) {
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int pw = (int)(t % pooled_w);
        const int ph = (int)((t / pooled_w) % pooled_h);
        const int c = (int)((t / ((long long)pooled_w * pooled_h)) % channels);
        const long long r = t / ((long long)pooled_w * pooled_h * channels);
        const scalar_t* roi = rois + r * 5;
        const int n = (int)roi[0];
        if (n < 0 || n >= num_images) {  // not an image of x: 0, and no gradient
            y[t] = 0;
            continue;
        }
        scalar_t start_h, bin_h, start_w, bin_w;
        const int gh = axis_geometry(roi[2], roi[4], spatial_scale, pooled_h, sampling_ratio, aligned != 0,
                                     &start_h, &bin_h);
        const int gw = axis_geometry(roi[1], roi[3], spatial_scale, pooled_w, sampling_ratio, aligned != 0,
                                     &start_w, &bin_w);
        const scalar_t* plane = x + ((long long)n * channels + c) * height * width;
        scalar_t sum = 0;
        for (int iy = 0; iy < gh; ++iy) {
            int ylo, yhi;
            scalar_t yl, yh;
            if (!axis_point(start_h, bin_h, ph, iy, gh, height, &ylo, &yhi, &yl, &yh)) continue;
            for (int ix = 0; ix < gw; ++ix) {
                int xlo, xhi;
                scalar_t xl, xh;
                if (!axis_point(start_w, bin_w, pw, ix, gw, width, &xlo, &xhi, &xl, &xh)) continue;
                const scalar_t v = ((mul_rn(mul_rn(yh, xh), plane[ylo * width + xlo]) +
                                     mul_rn(mul_rn(yh, xl), plane[ylo * width + xhi])) +
                                    mul_rn(mul_rn(yl, xh), plane[yhi * width + xlo])) +
                                   mul_rn(mul_rn(yl, xl), plane[yhi * width + xhi]);
                sum = sum + v;
            }
        }
        y[t] = sum / (scalar_t)max(gh * gw, 1);
    }
}

// One thread per dy[r, c, ph, pw]: each point of its bin adds dy * w / count to its four cells of
// dx (N, C, H, W), which starts at zero. atomicAdd, because bins and RoIs share cells.
extern "C" __global__ void roi_align_backward(const scalar_t* __restrict__ dy,
                                              const scalar_t* __restrict__ rois,
                                              long long total, int num_images, int channels,
                                              int height, int width, int pooled_h, int pooled_w,
                                              scalar_t spatial_scale, int sampling_ratio, int aligned,
                                              scalar_t* __restrict__ dx) {
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int pw = (int)(t % pooled_w);
        const int ph = (int)((t / pooled_w) % pooled_h);
        const int c = (int)((t / ((long long)pooled_w * pooled_h)) % channels);
        const long long r = t / ((long long)pooled_w * pooled_h * channels);
        const scalar_t* roi = rois + r * 5;
        const int n = (int)roi[0];
        if (n < 0 || n >= num_images) continue;
        scalar_t start_h, bin_h, start_w, bin_w;
        const int gh = axis_geometry(roi[2], roi[4], spatial_scale, pooled_h, sampling_ratio, aligned != 0,
                                     &start_h, &bin_h);
        const int gw = axis_geometry(roi[1], roi[3], spatial_scale, pooled_w, sampling_ratio, aligned != 0,
                                     &start_w, &bin_w);
        const scalar_t count = (scalar_t)(gh * gw);
        const scalar_t g = dy[t];
        scalar_t* plane = dx + ((long long)n * channels + c) * height * width;
        for (int iy = 0; iy < gh; ++iy) {
            int ylo, yhi;
            scalar_t yl, yh;
            if (!axis_point(start_h, bin_h, ph, iy, gh, height, &ylo, &yhi, &yl, &yh)) continue;
            for (int ix = 0; ix < gw; ++ix) {
                int xlo, xhi;
                scalar_t xl, xh;
                if (!axis_point(start_w, bin_w, pw, ix, gw, width, &xlo, &xhi, &xl, &xh)) continue;
                atomicAdd(plane + ylo * width + xlo, mul_rn(g, mul_rn(yh, xh)) / count);
                atomicAdd(plane + ylo * width + xhi, mul_rn(g, mul_rn(yh, xl)) / count);
                atomicAdd(plane + yhi * width + xlo, mul_rn(g, mul_rn(yl, xh)) / count);
                atomicAdd(plane + yhi * width + xhi, mul_rn(g, mul_rn(yl, xl)) / count);
            }
        }
    }
}
