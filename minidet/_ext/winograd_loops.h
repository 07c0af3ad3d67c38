/* The inner loops of minidet/_ext/winograd.pyx, for float and for double.

   They are in C so that GCC can compile each for AVX-512, AVX2 and the x86-64 baseline at once
   (target_clones: the loader picks the widest the CPU has, while the build targets the baseline).

   combine: dst[t] (+)= sum_j coef[j] * src[j][t], t < length, count <= 6 (zero coefficients skipped).
   split:   dst[p * plane + q] = row[m q + p - shift], q < q_len: a row split by phase p = column mod m,
            zero outside [0, width), and everywhere when row is NULL (a row outside the input).
   merge:   row[m q + p - shift] (+)= src[p * plane + q] + bias, inside [0, width): split's inverse.
   m is 2 or 4 (F(2x2, 3x3) or F(4x4, 3x3)), a literal stride in every loop so that it vectorises. */
#ifndef MINIDET_WINOGRAD_LOOPS_H
#define MINIDET_WINOGRAD_LOOPS_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MINIDET_WIDEST __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MINIDET_WIDEST
#endif

/* combine's sums with 1..6 terms, in the order of j: ((dst + c0 s0) + c1 s1) + ... or (c0 s0 + c1 s1) + ...
   Each reads every source once and writes dst once, where a loop over j would load and store dst
   once per term. */
#define MINIDET_SUM1(t) c[0] * s[0][t]
#define MINIDET_SUM2(t) MINIDET_SUM1(t) + c[1] * s[1][t]
#define MINIDET_SUM3(t) MINIDET_SUM2(t) + c[2] * s[2][t]
#define MINIDET_SUM4(t) MINIDET_SUM3(t) + c[3] * s[3][t]
#define MINIDET_SUM5(t) MINIDET_SUM4(t) + c[4] * s[4][t]
#define MINIDET_SUM6(t) MINIDET_SUM5(t) + c[5] * s[5][t]
#define MINIDET_COMBINE_CASE(k)                                                                    \
    case k:                                                                                       \
        if (add) for (Py_ssize_t t = 0; t < length; t++) dst[t] = dst[t] + MINIDET_SUM##k(t);     \
        else for (Py_ssize_t t = 0; t < length; t++) dst[t] = MINIDET_SUM##k(t);                  \
        break;

#define MINIDET_LOOPS(T)                                                                          \
MINIDET_WIDEST static void combine_##T(const T* coef, Py_ssize_t count, const T** src,            \
                                       T* restrict dst, Py_ssize_t length, int add) {             \
    T c[6];                                                                                       \
    const T* s[6];                                                                                \
    int terms = 0;                                                                                \
    for (Py_ssize_t j = 0; j < count && terms < 6; j++) {   /* count <= 6: a tile's side */      \
        if (coef[j] == 0) continue;                                                               \
        c[terms] = coef[j];                                                                       \
        s[terms++] = src[j];                                                                      \
    }                                                                                             \
    switch (terms) {                                                                              \
        case 0:                                                                                   \
            if (!add) for (Py_ssize_t t = 0; t < length; t++) dst[t] = 0;                        \
            break;                                                                                \
        MINIDET_COMBINE_CASE(1)                                                                   \
        MINIDET_COMBINE_CASE(2)                                                                   \
        MINIDET_COMBINE_CASE(3)                                                                   \
        MINIDET_COMBINE_CASE(4)                                                                   \
        MINIDET_COMBINE_CASE(5)                                                                   \
        MINIDET_COMBINE_CASE(6)                                                                   \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
MINIDET_WIDEST static void split_##T(const T* row, Py_ssize_t width, Py_ssize_t m,                \
                                     Py_ssize_t shift, T* dst, Py_ssize_t plane, Py_ssize_t q_len) { \
    for (Py_ssize_t p = 0; p < m; p++) {                                                          \
        T* out = dst + p * plane;                                                                 \
        const T* in = row ? row + p - shift : row;                                                \
        Py_ssize_t q = 0, lo = row ? p < shift : q_len, hi = (width - p + shift + m - 1) / m;     \
        if (hi > q_len) hi = q_len;                                                               \
        for (; q < lo; q++) out[q] = 0;                                                           \
        if (m == 2) for (; q < hi; q++) out[q] = in[2 * q];                                       \
        else for (; q < hi; q++) out[q] = in[4 * q];                                              \
        for (; q < q_len; q++) out[q] = 0;                                                        \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
MINIDET_WIDEST static void merge_##T(T* row, Py_ssize_t width, Py_ssize_t m, Py_ssize_t shift,    \
                                     const T* src, Py_ssize_t plane, T bias, int add) {           \
    for (Py_ssize_t p = 0; p < m; p++) {                                                          \
        const T* part = src + p * plane;                                                          \
        T* out = row + p - shift;                                                                 \
        Py_ssize_t lo = p < shift, hi = (width - p + shift + m - 1) / m;                          \
        if (add && m == 2) for (Py_ssize_t q = lo; q < hi; q++) out[2 * q] += part[q] + bias;     \
        else if (add) for (Py_ssize_t q = lo; q < hi; q++) out[4 * q] += part[q] + bias;          \
        else if (m == 2) for (Py_ssize_t q = lo; q < hi; q++) out[2 * q] = part[q] + bias;        \
        else for (Py_ssize_t q = lo; q < hi; q++) out[4 * q] = part[q] + bias;                    \
    }                                                                                             \
}

MINIDET_LOOPS(float)
MINIDET_LOOPS(double)

#endif
