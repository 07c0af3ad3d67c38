// Bitmask NMS on the GPU: the suppression matrix in 64-box tiles. Compiled with -Dscalar_t=float|double.
//
// Boxes arrive sorted by score, highest first. Block (col, row) compares the 64 boxes of tile `row`
// with the 64 boxes of tile `col` and writes, for each box i of the row tile, one 64-bit word:
// bit k set when box i overlaps box 64 col + k (a later box) by IoU > threshold. Tiles left of the
// diagonal are never read and not computed. The greedy pass over these words runs on the host
// (minidet/_ext/nms.pyx, reduce_suppression_mask).
//
// For boxes that overlap, the IoU is the CPU's (minidet/_ext/nms.pyx) operation for operation, and
// the products go through the _rn intrinsics so that no fused multiply-add changes a rounding: both
// devices decide a borderline pair alike. Boxes that do not overlap have IoU 0 on both. The edges
// are chosen by comparisons written as Cython writes min(a, b) and max(a, b), not by CUDA's
// min/max (fminf/fmaxf), which would return the other operand where a coordinate is NaN.

#define NMS_TILE 64

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

__device__ __forceinline__ scalar_t lesser(scalar_t a, scalar_t b) { return b < a ? b : a; }
__device__ __forceinline__ scalar_t greater(scalar_t a, scalar_t b) { return b > a ? b : a; }

__device__ __forceinline__ scalar_t box_iou(const scalar_t* a, const scalar_t* b) {
    const scalar_t w = lesser(a[2], b[2]) - greater(a[0], b[0]) + 1;
    const scalar_t h = lesser(a[3], b[3]) - greater(a[1], b[1]) + 1;
    if (w <= 0 || h <= 0) return 0;
    const scalar_t inter = mul_rn(w, h);
    const scalar_t area_a = mul_rn(a[2] - a[0] + 1, a[3] - a[1] + 1);
    const scalar_t area_b = mul_rn(b[2] - b[0] + 1, b[3] - b[1] + 1);
    return inter / (area_a + area_b - inter);
}

// grid (tiles, tiles), block (64,); boxes (n, 4) sorted; mask (n, tiles) of unsigned 64-bit words.
extern "C" __global__ void nms_mask(const scalar_t* __restrict__ boxes, int n, scalar_t threshold,
                                    unsigned long long* __restrict__ mask) {
    const int row = blockIdx.y, col = blockIdx.x;
    if (row > col) return;  // whole block: a box only suppresses boxes after it
    const int tiles = (n + NMS_TILE - 1) / NMS_TILE;
    const int row_size = min(n - row * NMS_TILE, NMS_TILE);
    const int col_size = min(n - col * NMS_TILE, NMS_TILE);

    __shared__ scalar_t tile[NMS_TILE * 4];
    if (threadIdx.x < col_size) {
        for (int k = 0; k < 4; ++k)
            tile[threadIdx.x * 4 + k] = boxes[(col * NMS_TILE + threadIdx.x) * 4 + k];
    }
    __syncthreads();

    if (threadIdx.x < row_size) {
        const int i = row * NMS_TILE + threadIdx.x;
        const scalar_t* box = boxes + i * 4;
        unsigned long long bits = 0;
        for (int k = (row == col) ? threadIdx.x + 1 : 0; k < col_size; ++k) {
            if (box_iou(box, tile + k * 4) >= threshold) bits |= 1ULL << k;
        }
        mask[(long long)i * tiles + col] = bits;
    }
}
