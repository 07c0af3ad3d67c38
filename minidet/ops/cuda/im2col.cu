// im2col and col2im on the GPU, the maps of minidet/ops/im2col.py:
//
//   cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] = xpad[n, c, oh*sh + i, ow*sw + j]
//
// with xpad the input zero-padded by ph rows and pw columns (never materialised).
// Compiled with -Dscalar_t=float or -Dscalar_t=double.
//
// The layout is Caffe's: im2col runs one thread per (c, n, oh, ow) that copies the kh*kw taps of
// its window down one column of cols (consecutive threads write consecutive addresses, tap after
// tap); col2im runs one thread per input pixel that computes the range of windows covering it and
// gathers their taps, with no division inside its loops. Indices are 32-bit: the host checks that
// the thread counts and the planes fit (minidet/ops/im2col.py); offsets into cols and x, which may
// not, are taken in 64 bits once per thread and then advanced by pointer steps.

// The geometry both kernels take between their input and their output, and the thread count.
#define IM2COL_ARGS \
    int N, int C, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int OH, int OW, int threads

// One thread per (c, n, oh, ow): `threads` = C * N * OH * OW.
extern "C" __global__ void im2col(const scalar_t* __restrict__ x, IM2COL_ARGS, scalar_t* __restrict__ cols) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= threads) return;
    const int columns = N * OH * OW;
    const int column = t % columns;               // (n, oh, ow)
    const int c = t / columns;
    const int ow = column % OW;
    const int oh = (column / OW) % OH;
    const int n = column / (OW * OH);
    const int h0 = oh * sh - ph;
    const int w0 = ow * sw - pw;
    const scalar_t* plane = x + ((long long)n * C + c) * H * W;
    scalar_t* out = cols + (long long)c * kh * kw * columns + column;
    for (int i = 0; i < kh; ++i) {
        const int h = h0 + i;
        const bool row_inside = h >= 0 && h < H;
        for (int j = 0; j < kw; ++j) {
            const int w = w0 + j;
            *out = (row_inside && w >= 0 && w < W) ? plane[h * W + w] : (scalar_t)0;
            out += columns;                       // the next tap's row of cols
        }
    }
}

// One thread per input pixel (n, c, ih, iw): `threads` = N * C * H * W. The pixel sits at tap
// (i, j) = (ih + ph - oh*sh, iw + pw - ow*sw) of each window (oh, ow) with 0 <= i < kh and
// 0 <= j < kw. Its taps are added in increasing (i, j), the order of the CPU's col2im
// (minidet/_ext/im2col.pyx), so that both devices round every sum alike.
extern "C" __global__ void col2im(const scalar_t* __restrict__ cols, IM2COL_ARGS, scalar_t* __restrict__ dx) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= threads) return;
    const int hp = (t / W) % H + ph;              // the pixel's row and column in xpad
    const int wp = t % W + pw;
    const int c = (t / (W * H)) % C;
    const int n = t / (W * H * C);
    // Windows with oh*sh <= hp < oh*sh + kh: oh from ceil((hp - kh + 1) / sh) to floor(hp / sh).
    const int oh_first = hp < kh ? 0 : (hp - kh) / sh + 1;
    const int oh_last = min(hp / sh, OH - 1);
    const int ow_first = wp < kw ? 0 : (wp - kw) / sw + 1;
    const int ow_last = min(wp / sw, OW - 1);
    const int columns = N * OH * OW;
    // Tap (i, j) of window (oh, ow) is cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow]: one window up
    // (oh - 1) is sh taps on (i + sh, sh*kw rows of cols down) and OW columns back; likewise in ow.
    const long long oh_step = (long long)sh * kw * columns - OW;
    const long long ow_step = (long long)sw * columns - 1;
    const scalar_t* row = cols + ((long long)c * kh * kw + (long long)(hp - oh_last * sh) * kw) * columns
                          + n * OH * OW + oh_last * OW;
    scalar_t sum = 0;
    for (int oh = oh_last; oh >= oh_first; --oh, row += oh_step) {       // i = hp - oh*sh increasing
        const scalar_t* tap = row + (long long)(wp - ow_last * sw) * columns + ow_last;
        for (int ow = ow_last; ow >= ow_first; --ow, tap += ow_step) {   // j = wp - ow*sw increasing
            sum += *tap;
        }
    }
    dx[t] = sum;
}
