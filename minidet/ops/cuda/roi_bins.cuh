// What the RoI kernels of roi_align.cu and roi_pool.cu share: a grid-stride loop over the outputs
// y[r, c, ph, pw] (R, C, PH, PW), and the RoI, channel and bin of each. minidet.ops.cuda.source
// inlines this file where a kernel source includes it, so that CuPy's cache, keyed by the source
// text, sees it.

// Caffe's CUDA_KERNEL_LOOP: t runs over [0, total) whatever the size of the grid.
#define CUDA_KERNEL_LOOP(t, total)                                                    \
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < (total); \
         t += (long long)gridDim.x * blockDim.x)

// Output t of (R, C, PH, PW): its RoI's row of rois (R, 5) = [n, x1, y1, x2, y2], its image n,
// channel c and bin (ph, pw); `plane` = n * C + c numbers the (n, c) plane of the input map.
struct RoIBin {
    const scalar_t* roi;
    long long plane;
    int n, c, ph, pw;
};

__device__ __forceinline__ RoIBin roi_bin_of(long long t, const scalar_t* rois, int channels, int pooled_h,
                                             int pooled_w) {
    RoIBin b;
    b.pw = (int)(t % pooled_w);
    b.ph = (int)((t / pooled_w) % pooled_h);
    b.c = (int)((t / ((long long)pooled_w * pooled_h)) % channels);
    b.roi = rois + t / ((long long)pooled_w * pooled_h * channels) * 5;
    b.n = (int)b.roi[0];
    b.plane = (long long)b.n * channels + b.c;
    return b;
}
