// im2col and col2im on the GPU, the same maps as minidet/_ext/im2col.pyx:
//
//   cols[(c*kh + i)*kw + j, (n*OH + oh)*OW + ow] = xpad[n, c, oh*sh + i, ow*sw + j]
//
// with xpad the input zero-padded by ph rows and pw columns (never materialised).
// Compiled with -Dscalar_t=float or -Dscalar_t=double.

// One thread per element of cols (C*kh*kw, N*OH*OW); `total` is its size.
extern "C" __global__ void im2col(const scalar_t* __restrict__ x,
                                  int N, int C, int H, int W,
                                  int kh, int kw, int sh, int sw, int ph, int pw,
                                  int OH, int OW, long long total,
                                  scalar_t* __restrict__ cols) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= total) return;
    const long long columns = (long long)N * OH * OW;
    const long long r = index / columns;          // row (c, i, j)
    long long col = index % columns;              // column (n, oh, ow)
    const int ow = (int)(col % OW);
    col /= OW;
    const int oh = (int)(col % OH);
    const int n = (int)(col / OH);
    const int j = (int)(r % kw);
    const int i = (int)((r / kw) % kh);
    const int c = (int)(r / ((long long)kh * kw));
    const int ih = oh * sh - ph + i;
    const int iw = ow * sw - pw + j;
    scalar_t value = 0;
    if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
        value = x[(((long long)n * C + c) * H + ih) * W + iw];
    }
    cols[index] = value;
}

// One thread per element of dx (N, C, H, W); `total` is its size. Each input pixel
// gathers the cols entries copied from it (no atomics, so the sum is deterministic):
// tap (i, j) of output (oh, ow) read it when oh*sh - ph + i = ih and ow*sw - pw + j = iw.
extern "C" __global__ void col2im(const scalar_t* __restrict__ cols,
                                  int N, int C, int H, int W,
                                  int kh, int kw, int sh, int sw, int ph, int pw,
                                  int OH, int OW, long long total,
                                  scalar_t* __restrict__ dx) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= total) return;
    const int iw = (int)(index % W);
    const int ih = (int)((index / W) % H);
    const int c = (int)((index / ((long long)W * H)) % C);
    const int n = (int)(index / ((long long)W * H * C));
    const long long columns = (long long)N * OH * OW;
    scalar_t sum = 0;
    for (int i = 0; i < kh; ++i) {
        const int oh_sh = ih + ph - i;            // = oh * sh
        if (oh_sh < 0 || oh_sh % sh != 0) continue;
        const int oh = oh_sh / sh;
        if (oh >= OH) continue;
        for (int j = 0; j < kw; ++j) {
            const int ow_sw = iw + pw - j;        // = ow * sw
            if (ow_sw < 0 || ow_sw % sw != 0) continue;
            const int ow = ow_sw / sw;
            if (ow >= OW) continue;
            const long long r = ((long long)c * kh + i) * kw + j;
            sum += cols[r * columns + ((long long)n * OH + oh) * OW + ow];
        }
    }
    dx[index] = sum;
}
