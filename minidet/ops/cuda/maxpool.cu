// Max pooling on the GPU, the same maps as minidet/_ext/maxpool.pyx.
//
// Window (oh, ow) of an (H, W) plane covers rows [oh*sh - ph, oh*sh - ph + kh) and
// columns [ow*sw - pw, ow*sw - pw + kw), clipped to the input, so padding never wins.
// argmax holds the flat index h*W + w of the maximum inside its (n, c) plane: the first
// maximum in row-major order on ties, and a NaN wins (as in torch).
// Compiled with -Dscalar_t=float or -Dscalar_t=double.

// One thread per output element (N, C, OH, OW); `total` is its size.
extern "C" __global__ void max_pool_forward(const scalar_t* __restrict__ x,
                                            int N, int C, int H, int W,
                                            int kh, int kw, int sh, int sw, int ph, int pw,
                                            int OH, int OW, long long total,
                                            scalar_t* __restrict__ y, int* __restrict__ argmax) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= total) return;
    const int ow = (int)(index % OW);
    const int oh = (int)((index / OW) % OH);
    const long long plane = index / ((long long)OW * OH);   // n * C + c
    int hs = oh * sh - ph;
    int ws = ow * sw - pw;
    const int he = hs + kh < H ? hs + kh : H;
    const int we = ws + kw < W ? ws + kw : W;
    hs = hs > 0 ? hs : 0;
    ws = ws > 0 ? ws : 0;
    // The window is never empty: the first pixel starts the search.
    const scalar_t* x_plane = x + plane * H * W;
    int best_index = hs * W + ws;
    scalar_t best = x_plane[best_index];
    for (int h = hs; h < he; ++h) {
        for (int w = ws; w < we; ++w) {
            const scalar_t v = x_plane[h * W + w];
            if (v > best || v != v) {
                best = v;
                best_index = h * W + w;
            }
        }
    }
    y[index] = best;
    argmax[index] = best_index;
}

// One thread per input element (N, C, H, W); `total` is its size. Each input pixel
// gathers dy from the windows that could contain it and whose argmax is this pixel
// (no atomics, so the sum is deterministic).
extern "C" __global__ void max_pool_backward(const scalar_t* __restrict__ dy,
                                             const int* __restrict__ argmax,
                                             int N, int C, int H, int W,
                                             int kh, int kw, int sh, int sw, int ph, int pw,
                                             int OH, int OW, long long total,
                                             scalar_t* __restrict__ dx) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= total) return;
    const int w = (int)(index % W);
    const int h = (int)((index / W) % H);
    const long long plane = index / ((long long)W * H);     // n * C + c
    // Windows oh with oh*sh - ph <= h < oh*sh - ph + kh.
    const int oh_start = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1;
    const int oh_end = (h + ph) / sh + 1 < OH ? (h + ph) / sh + 1 : OH;
    const int ow_start = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1;
    const int ow_end = (w + pw) / sw + 1 < OW ? (w + pw) / sw + 1 : OW;
    const long long offset = plane * OH * OW;
    const int target = h * W + w;
    scalar_t sum = 0;
    for (int oh = oh_start; oh < oh_end; ++oh) {
        for (int ow = ow_start; ow < ow_end; ++ow) {
            if (argmax[offset + oh * OW + ow] == target) {
                sum += dy[offset + oh * OW + ow];
            }
        }
    }
    dx[index] = sum;
}
