/* Per-channel moments of a float32 array in memory, and one-pass statistics of a whole array: pure functions
 * of memory with a C ABI.
 *
 * Plain C99, no Python headers: built by setup.py as a shared library and loaded with ctypes by
 * initdiag.recording.moments, whose torch twin moments_torch() is the reference the tests compare it with.
 *
 * int initdiag_moments(x, G, C, P, sg, sc, sp, out, mid, thr)
 *   Reads x[g, c, p] = x[g*sg + c*sc + p*sp] (strides in elements) for g < G, c < C, p < P and writes
 *   2*C + 2 doubles at out:
 *     out[c]       = sum_{g,p} x[g,c,p]
 *     out[C + c]   = sum_{g,p} x[g,c,p]^2
 *     out[2C]      = number of non-zero elements
 *     out[2C + 1]  = number of elements with |x - mid| >= thr, computed in float (0 when thr < 0)
 *   Returns 0, or -1 (nothing written) for a negative size, C < 1 or a null pointer. Nothing but the
 *   arguments and the memory they point to is read. The caller guarantees that the memory is alive for
 *   the call and that out does not overlap it.
 *
 * Accuracy. Every value is widened to double (exact) and squared in double (exact: a 24-bit significand
 * squared fits in 53 bits, and float32's range squared stays inside double's normal range), then summed in
 * double in an order fixed by this code for each layout (LANES interleaved partial sums folded in a fixed
 * tree; or row by row; or, for runs shorter than 2 * LANES with a sample's values contiguous, per position
 * over the samples and then the positions in order), never by the machine's vector width: the result is
 * the same on every x86-64 and ARM CPU and compiler with IEEE 754 double arithmetic (FLT_EVAL_METHOD 0; no
 * -ffast-math, which would let the compiler reorder the sums; a fused multiply-add changes nothing since the
 * products are exact).
 * With n = G*P values per channel and u = 2^-53, any summation order gives (Higham 2002, eq. 4.4)
 *     |s1 - sum x|   <= (n - 1) u sum |x|      |s2 - sum x^2| <= (n - 1) u sum x^2
 * (to first order in u). The counts are exact below 2^53.
 *
 * int initdiag_moments_at(x, geometry, out, bounds)
 *   initdiag_moments(x, geometry[0..5], out, bounds[0], bounds[1]): the same call with the six sizes and strides
 *   and the two bounds read from memory, for callers whose per-argument cost dominates (ctypes converts each
 *   argument: ~1.1 us a call with ten, ~0.3 us with four pointers, on an AMD EPYC core).
 *
 * int initdiag_abs_stats(x, n, t1, t2, out)
 *   Reads the n contiguous floats at x and writes 7 doubles at out:
 *     out[0] = sum x                 out[1] = sum x^2 (as above: exact squares, +inf beyond FLT_MAX)
 *     out[2] = number of non-zero x  out[3] = smallest non-zero |x| (+inf when none, NaN when any x is NaN)
 *     out[4] = largest |x| (+inf when any x is not finite)
 *     out[5], out[6] = number of non-zero x with |x| < t1, |x| < t2, both compared in float (t1, t2 rounded
 *     to float first: what torch compares a float32 tensor with a Python number in)
 *   out[0..2] are initdiag_moments's of one channel of n values (the same bits); the rest is exact in any
 *   order. With AVX2 and FMA, one read from memory: block after block of 2048 values, the block's sums, then
 *   its magnitudes while it is in L1; else the sums, then a second read for the rest. Returns 0, or -1
 *   (nothing written) for n < 0 or a null pointer.
 *
 * Overflow. A channel's sum of squares beyond float32's largest finite value (FLT_MAX, ~3.4e38) is written
 * as +inf: a float32 model's own arithmetic on these values (a norm, a loss) overflows there, and a
 * non-finite statistic is what the divergence check reads as overflow.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(_WIN32)
#define INITDIAG_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define INITDIAG_EXPORT __attribute__((visibility("default")))
#else
#define INITDIAG_EXPORT
#endif

#if defined(_MSC_VER)
#define RESTRICT __restrict
#else
#define RESTRICT restrict
#endif

#define INITDIAG_ABI 5 /* bump when the signature or the meaning of out changes */
#define LANES 16       /* interleaved partial sums of contiguous runs: vectorizable, order fixed */
#define MAX_POSITIONS ((int64_t) 1 << 16) /* per-position sums of short runs: at most 1 MiB of scratch */

/* body_lanes(x, G, sg, body, a, b, z): the body lanes of one channel's runs (see channel_runs) into the
 * zeroed a, b, z: lane k sums, run after run, the values at p = k (mod LANES) of each run's first `body`
 * values; tail_lanes: the same of each run's last P - body values (fewer than LANES) into the zeroed ta, tb,
 * tz. Plain C (compilers vectorize it as they can); on x86-64 with GCC or Clang and a CPU with AVX2 and FMA,
 * channel_runs_avx2 makes the same sums, lane for lane and bit for bit (-DINITDIAG_SCALAR_SUMS builds the plain
 * C loops alone, to compare the two). */
static void body_lanes(const float *x, int64_t G, int64_t sg, int64_t body, double *a, double *b, int64_t *z) {
    for (int64_t g = 0; g < G; g++) {
        const float *RESTRICT v = x + g * sg;
        for (int64_t p = 0; p < body; p += LANES) {
            for (int k = 0; k < LANES; k++) {
                double w = (double) v[p + k];
                a[k] += w;
                b[k] += w * w;
                z[k] += w != 0.0;
            }
        }
    }
}

static void tail_lanes(const float *x, int64_t G, int64_t sg, int64_t body, int64_t P, double *ta, double *tb,
                       int64_t *tz) {
    for (int64_t g = 0; g < G; g++) {
        const float *RESTRICT v = x + g * sg + body;
        for (int64_t k = 0; k < P - body; k++) {
            double w = (double) v[k];
            ta[k] += w;
            tb[k] += w * w;
            tz[k] += w != 0.0;
        }
    }
}

/* Lane k += tail lane k, then the lanes folded pairwise (k += k + LANES/2, ..., k += k + 1), into *s1, *s2, *nz. */
static void fold_lanes(double *a, double *b, const double *ta, const double *tb, int64_t z, double *s1,
                       double *s2, double *nz) {
    for (int k = 0; k < LANES; k++) {
        a[k] += ta[k];
        b[k] += tb[k];
    }
    for (int width = LANES / 2; width > 0; width /= 2) {
        for (int k = 0; k < width; k++) {
            a[k] += a[k + width];
            b[k] += b[k + width];
        }
    }
    *s1 += a[0];
    *s2 += b[0];
    *nz += (double) z;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(INITDIAG_SCALAR_SUMS)
#include <immintrin.h>
#define AVX2_SUMS 1
#ifndef INITDIAG_COUNT_CHUNK /* values read between two flushes of the int32 count lanes: a multiple of LANES */
#define INITDIAG_COUNT_CHUNK (1 << 28) /* (a test builds it small to run the flushes) */
#endif
#define COUNT_CHUNK ((int64_t) INITDIAG_COUNT_CHUNK)

static int avx2_sums(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

__attribute__((target("avx2"))) static int64_t lanes_total(__m256i v) {
    int32_t lane[8];
    int64_t total = 0;
    _mm256_storeu_si256((__m256i *) lane, v);
    for (int k = 0; k < 8; k++) total += lane[k];
    return total;
}

/* The sixteen sum lanes, square lanes, tail sum lanes and tail square lanes, each in four registers of four
 * doubles (lanes[0..3]), stored and folded by fold_lanes into *s1, *s2, *nz with the non-zero count. */
__attribute__((target("avx2"))) static void fold_registers(const __m256d lanes[4][4], int64_t count, double *s1,
                                                          double *s2, double *nz) {
    double a[LANES], b[LANES], ta[LANES], tb[LANES];
    double *into[4] = {a, b, ta, tb};
    for (int r = 0; r < 4; r++) {
        for (int j = 0; j < 4; j++) _mm256_storeu_pd(into[r] + 4 * j, lanes[r][j]);
    }
    fold_lanes(a, b, ta, tb, count, s1, s2, nz);
}

/* The mask of a run's tail of k values in one register of 8 floats: lane i all ones when i < k (for the
 * second register of a 16-value tail, k - 8). */
__attribute__((target("avx2"))) static inline __m256i tail_mask(int64_t k) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int) k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Once *since (the values or rows read since the last flush) reaches COUNT_CHUNK: the int32 count lanes *n
 * added to *total and zeroed. */
__attribute__((target("avx2"))) static inline void flush_counts(__m256i *n, int64_t *total, int64_t *since) {
    if (*since >= COUNT_CHUNK) {
        *total += lanes_total(*n);
        *n = _mm256_setzero_si256();
        *since = 0;
    }
}

/* Eight floats f into two 4-double lanes each of sums a0, a1 and squares b0, b1, and their non-zero count (NaN
 * counts, as in C) into the int32 lanes of n. A fused multiply-add rounds as the product and the sum do: the
 * product of two widened floats is exact. */
#define ADD8(f, a0, a1, b0, b1, n)                                                                    \
    do {                                                                                              \
        __m256d w0_ = _mm256_cvtps_pd(_mm256_castps256_ps128(f));                                     \
        __m256d w1_ = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));                                   \
        a0 = _mm256_add_pd(a0, w0_);                                                                  \
        a1 = _mm256_add_pd(a1, w1_);                                                                  \
        b0 = _mm256_fmadd_pd(w0_, w0_, b0);                                                           \
        b1 = _mm256_fmadd_pd(w1_, w1_, b1);                                                           \
        n = _mm256_sub_epi32(n, _mm256_castps_si256(_mm256_cmp_ps(f, _mm256_setzero_ps(), _CMP_NEQ_UQ))); \
    } while (0)

/* channel_runs's sums (body_lanes, tail_lanes, fold_lanes), the same additions in the same order: the sixteen
 * lanes in four registers, each run's tail read with masked loads (zeros beyond the run: exact no-ops). */
__attribute__((target("avx2,fma"))) static void channel_runs_avx2(const float *x, int64_t G, int64_t sg, int64_t P,
                                                                 double *s1, double *s2, double *nz) {
    const __m256d zero = _mm256_setzero_pd();
    __m256d a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    __m256d t0 = zero, t1 = zero, t2 = zero, t3 = zero, u0 = zero, u1 = zero, u2 = zero, u3 = zero;
    __m256i n = _mm256_setzero_si256();
    int64_t body = P - P % LANES, tail = P - body, total = 0, pending = 0;
    __m256i m0 = tail_mask(tail), m1 = tail_mask(tail - 8);
    for (int64_t g = 0; g < G; g++) {
        const float *v = x + g * sg;
        for (int64_t start = 0; start < body; start += COUNT_CHUNK) {
            int64_t end = body - start > COUNT_CHUNK ? start + COUNT_CHUNK : body;
            for (int64_t p = start; p < end; p += LANES) {
                __m256 f0 = _mm256_loadu_ps(v + p), f1 = _mm256_loadu_ps(v + p + 8);
                ADD8(f0, a0, a1, b0, b1, n);
                ADD8(f1, a2, a3, b2, b3, n);
            }
            pending += end - start; /* each lane has counted at most one in eight of the values read */
            flush_counts(&n, &total, &pending);
        }
        if (tail > 0) {
            __m256 f0 = _mm256_maskload_ps(v + body, m0), f1 = _mm256_maskload_ps(v + body + 8, m1);
            ADD8(f0, t0, t1, u0, u1, n);
            ADD8(f1, t2, t3, u2, u3, n);
            pending += LANES;
            flush_counts(&n, &total, &pending);
        }
    }
    const __m256d lanes[4][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}, {t0, t1, t2, t3}, {u0, u1, u2, u3}};
    fold_registers(lanes, total + lanes_total(n), s1, s2, nz);
}
#endif

/* One channel stored as G runs of P contiguous floats, run g at x + g*sg: its sum, sum of squares and
 * non-zero count, added to *s1, *s2, *nz. Lane k sums, run after run, the values at p = k (mod LANES) of
 * each run's first P - P % LANES (body_lanes); tail lane k the k-th of each run's last P % LANES
 * (tail_lanes); then lane k += tail lane k, and the lanes are folded pairwise (fold_lanes). */
static void channel_runs(const float *x, int64_t G, int64_t sg, int64_t P, double *s1, double *s2, double *nz) {
#if defined(AVX2_SUMS)
    if (avx2_sums()) {
        channel_runs_avx2(x, G, sg, P, s1, s2, nz);
        return;
    }
#endif
    double a[LANES] = {0}, b[LANES] = {0}, ta[LANES] = {0}, tb[LANES] = {0};
    int64_t z[LANES] = {0}, tz[LANES] = {0}, body = P - P % LANES, count = 0;
    if (body > 0) body_lanes(x, G, sg, body, a, b, z);
    tail_lanes(x, G, sg, body, P, ta, tb, tz);
    for (int k = 0; k < LANES; k++) count += z[k] + tz[k];
    fold_lanes(a, b, ta, tb, count, s1, s2, nz);
}

#if defined(AVX2_SUMS)
/* One channel's sums over the rows, s1[c] and s2[c] added to row after row (rows_into_channels's order). */
static int64_t one_channel_rows(const float *x, int64_t G, int64_t P, int64_t sg, int64_t sp, double *s1,
                                double *s2) {
    double a = *s1, b = *s2;
    int64_t nz = 0;
    for (int64_t g = 0; g < G; g++) {
        for (int64_t p = 0; p < P; p++) {
            double w = (double) x[g * sg + p * sp];
            a += w;
            b += w * w;
            nz += w != 0.0;
        }
    }
    *s1 = a;
    *s2 = b;
    return nz;
}

/* rows_into_channels's sums for the 16 channels from x (4 of them for channel_block4): each channel's s1[c],
 * s2[c] added to row after row (the same additions in the same order), held in registers over all the rows. */
__attribute__((target("avx2,fma"))) static int64_t channel_block16(const float *x, int64_t G, int64_t P, int64_t sg,
                                                                  int64_t sp, double *s1, double *s2) {
    __m256d a0 = _mm256_loadu_pd(s1), a1 = _mm256_loadu_pd(s1 + 4), a2 = _mm256_loadu_pd(s1 + 8);
    __m256d a3 = _mm256_loadu_pd(s1 + 12), b0 = _mm256_loadu_pd(s2), b1 = _mm256_loadu_pd(s2 + 4);
    __m256d b2 = _mm256_loadu_pd(s2 + 8), b3 = _mm256_loadu_pd(s2 + 12);
    __m256i n = _mm256_setzero_si256();
    int64_t total = 0, since = 0;
    for (int64_t g = 0; g < G; g++) {
        for (int64_t p = 0; p < P; p++) {
            const float *row = x + g * sg + p * sp;
            __m256 f0 = _mm256_loadu_ps(row), f1 = _mm256_loadu_ps(row + 8);
            ADD8(f0, a0, a1, b0, b1, n);
            ADD8(f1, a2, a3, b2, b3, n);
            since++; /* each lane has counted at most 2 values a row */
            flush_counts(&n, &total, &since);
        }
    }
    _mm256_storeu_pd(s1, a0), _mm256_storeu_pd(s1 + 4, a1), _mm256_storeu_pd(s1 + 8, a2);
    _mm256_storeu_pd(s1 + 12, a3), _mm256_storeu_pd(s2, b0), _mm256_storeu_pd(s2 + 4, b1);
    _mm256_storeu_pd(s2 + 8, b2), _mm256_storeu_pd(s2 + 12, b3);
    return total + lanes_total(n);
}

__attribute__((target("avx2,fma"))) static int64_t channel_block4(const float *x, int64_t G, int64_t P, int64_t sg,
                                                                 int64_t sp, double *s1, double *s2) {
    __m256d a = _mm256_loadu_pd(s1), b = _mm256_loadu_pd(s2);
    __m128i n = _mm_setzero_si128();
    int64_t total = 0, since = 0;
    int32_t lane[4];
    for (int64_t g = 0; g < G; g++) {
        for (int64_t p = 0; p < P; p++) {
            __m128 f = _mm_loadu_ps(x + g * sg + p * sp);
            __m256d w = _mm256_cvtps_pd(f);
            a = _mm256_add_pd(a, w);
            b = _mm256_fmadd_pd(w, w, b);
            n = _mm_sub_epi32(n, _mm_castps_si128(_mm_cmpneq_ps(f, _mm_setzero_ps()))); /* NaN counts */
            if (++since == COUNT_CHUNK) {
                _mm_storeu_si128((__m128i *) lane, n);
                total += (int64_t) lane[0] + lane[1] + lane[2] + lane[3];
                n = _mm_setzero_si128();
                since = 0;
            }
        }
    }
    _mm256_storeu_pd(s1, a);
    _mm256_storeu_pd(s2, b);
    _mm_storeu_si128((__m128i *) lane, n);
    return total + lane[0] + lane[1] + lane[2] + lane[3];
}

/* rows_into_channels's sums for C >= 4: blocks of 16 channels, then of 4, then one by one, each block over
 * all the rows. */
static double rows_into_channels_avx2(const float *x, int64_t G, int64_t C, int64_t P, int64_t sg, int64_t sp,
                                      double *s1, double *s2) {
    int64_t c = 0, nz = 0;
    for (; c + 16 <= C; c += 16) nz += channel_block16(x + c, G, P, sg, sp, s1 + c, s2 + c);
    for (; c + 4 <= C; c += 4) nz += channel_block4(x + c, G, P, sg, sp, s1 + c, s2 + c);
    for (; c < C; c++) nz += one_channel_rows(x + c, G, P, sg, sp, s1 + c, s2 + c);
    return (double) nz;
}
#endif

/* Channels innermost (sc == 1): each row of C values is added to the C double sums at s1, s2 (row by row,
 * vectorized across channels). */
static double rows_into_channels(const float *RESTRICT x, int64_t G, int64_t C, int64_t P, int64_t sg,
                                 int64_t sp, double *RESTRICT s1, double *RESTRICT s2) {
#if defined(AVX2_SUMS)
    if (C >= 4 && avx2_sums()) return rows_into_channels_avx2(x, G, C, P, sg, sp, s1, s2);
#endif
    int64_t nz = 0;
    for (int64_t g = 0; g < G; g++) {
        for (int64_t p = 0; p < P; p++) {
            const float *RESTRICT row = x + g * sg + p * sp;
            for (int64_t c = 0; c < C; c++) {
                double w = (double) row[c];
                s1[c] += w;
                s2[c] += w * w;
                nz += row[c] != 0.0f;
            }
        }
    }
    return (double) nz;
}

/* Runs shorter than 2 * LANES, each sample's C*P values contiguous (sp == 1, sc == P): each sample's row of
 * C*P values added to C*P per-position sums (rows_into_channels), then each channel's P sums in order into
 * s1, s2. Returns the non-zero count, or -1 (nothing added) when the scratch memory cannot be had. */
static double short_runs(const float *x, int64_t G, int64_t C, int64_t P, int64_t sg, double *s1, double *s2) {
    double *positions = calloc((size_t) (2 * C * P), sizeof(double));
    if (positions == NULL) return -1.0;
    double nz = rows_into_channels(x, G, C * P, 1, sg, 0, positions, positions + C * P);
    for (int64_t c = 0; c < C; c++) {
        for (int64_t p = 0; p < P; p++) {
            s1[c] += positions[c * P + p];
            s2[c] += positions[C * P + c * P + p];
        }
    }
    free(positions);
    return nz;
}

/* Any other layout: channel by channel; contiguous runs (sp == 1) through channel_runs, strided values one
 * by one. */
static double channels_outer(const float *x, int64_t G, int64_t C, int64_t P, int64_t sg, int64_t sc,
                             int64_t sp, double *s1, double *s2) {
    double nz = 0.0;
    if (sp == 1) {
        for (int64_t c = 0; c < C; c++) channel_runs(x + c * sc, G, sg, P, s1 + c, s2 + c, &nz);
        return nz;
    }
    for (int64_t g = 0; g < G; g++) {
        for (int64_t c = 0; c < C; c++) {
            const float *col = x + g * sg + c * sc;
            for (int64_t p = 0; p < P; p++) {
                double w = (double) col[p * sp];
                s1[c] += w;
                s2[c] += w * w;
                nz += w != 0.0;
            }
        }
    }
    return nz;
}

/* Number of values with |x - mid| >= thr, in float arithmetic as torch does it for a float32 tensor; read
 * in memory order for channels innermost (sc == 1), channel by channel otherwise. */
static double saturated(const float *x, int64_t G, int64_t C, int64_t P, int64_t sg, int64_t sc, int64_t sp,
                        float mid, float thr) {
    int64_t count = 0, inner = sc == 1 ? C : P, outer = sc == 1 ? P : C;
    int64_t s_in = sc == 1 ? 1 : sp, s_out = sc == 1 ? sp : sc;
    for (int64_t g = 0; g < G; g++) {
        for (int64_t o = 0; o < outer; o++) {
            const float *run = x + g * sg + o * s_out;
            for (int64_t i = 0; i < inner; i++) count += fabsf(run[i * s_in] - mid) >= thr;
        }
    }
    return (double) count;
}

INITDIAG_EXPORT int initdiag_moments_abi(void) { return INITDIAG_ABI; }

INITDIAG_EXPORT int initdiag_moments(const float *x, int64_t G, int64_t C, int64_t P, int64_t sg, int64_t sc,
                                     int64_t sp, double *out, double mid, double thr) {
    if (G < 0 || C < 1 || P < 0 || out == NULL || (x == NULL && G > 0 && P > 0)) {
        return -1;
    }
    double *s1 = out, *s2 = out + C;
    for (int64_t c = 0; c < 2 * C; c++) out[c] = 0.0;
    if (G == 0 || P == 0) {
        out[2 * C] = 0.0;
        out[2 * C + 1] = 0.0;
        return 0;
    }
    double nz = -1.0;
    if (sc == 1 && C > 1) {
        nz = rows_into_channels(x, G, C, P, sg, sp, s1, s2);
    } else if (sp == 1 && sc == P && P < 2 * LANES && C > 1 && C * P <= MAX_POSITIONS) {
        nz = short_runs(x, G, C, P, sg, s1, s2);
    }
    out[2 * C] = nz >= 0.0 ? nz : channels_outer(x, G, C, P, sg, sc, sp, s1, s2);
    for (int64_t c = 0; c < C; c++) {
        if (s2[c] > FLT_MAX) s2[c] = INFINITY;
    }
    out[2 * C + 1] = thr >= 0.0 ? saturated(x, G, C, P, sg, sc, sp, (float) mid, (float) thr) : 0.0;
    return 0;
}

INITDIAG_EXPORT int initdiag_moments_at(const float *x, const int64_t *geometry, double *out, const double *bounds) {
    if (geometry == NULL || bounds == NULL) return -1;
    return initdiag_moments(x, geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5], out,
                            bounds[0], bounds[1]);
}

/* The magnitude part of initdiag_abs_stats over x[0..n): min non-zero |x| into *lo, max |x| into *hi (NaN
 * skipped by both), and the counts of NaN and of non-zero |x| below f1 and f2 added to *nan, *c1, *c2.
 * Exact whatever the order, so the vector and the plain loop agree. */
static void magnitudes_c(const float *RESTRICT x, int64_t n, float f1, float f2, float *lo, float *hi,
                         int64_t *nan, int64_t *c1, int64_t *c2) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], a = fabsf(v);
        int live = a > 0.0f; /* NaN: not > 0 */
        if (live && a < *lo) *lo = a;
        if (a > *hi) *hi = a;
        *nan += v != v;
        *c1 += live & (a < f1);
        *c2 += live & (a < f2);
    }
}

#if defined(AVX2_SUMS)
/* The eight lanes of the two magnitude registers (min non-zero |x|, max |x|) folded into *lo, *hi. */
__attribute__((target("avx2"))) static void fold_magnitudes(__m256 vlo, __m256 vhi, float *lo, float *hi) {
    float lane_lo[8], lane_hi[8];
    _mm256_storeu_ps(lane_lo, vlo);
    _mm256_storeu_ps(lane_hi, vhi);
    for (int k = 0; k < 8; k++) {
        if (lane_lo[k] < *lo) *lo = lane_lo[k];
        if (lane_hi[k] > *hi) *hi = lane_hi[k];
    }
}


#define STATS_BLOCK ((int64_t) 2048) /* values summed, then measured while in L1 (8 KiB): a multiple of LANES */

/* initdiag_abs_stats in one read from memory: block after block of STATS_BLOCK values, the block's sums
 * (channel_runs_avx2's additions for one run of n values, in the same order: the same bits), then its
 * magnitudes (exact in any order) while the block is in L1; the last n % LANES values
 * as channel_runs_avx2's tail and magnitudes_c. */
__attribute__((target("avx2,fma"))) static void abs_stats_avx2(const float *x, int64_t n, float f1, float f2,
                                                              double *s1, double *s2, double *nz, float *lo,
                                                              float *hi, int64_t *nan, int64_t *c1, int64_t *c2) {
    const __m256d zero = _mm256_setzero_pd();
    const __m256 sign = _mm256_set1_ps(-0.0f), fzero = _mm256_setzero_ps(), inf = _mm256_set1_ps(INFINITY);
    const __m256 t1 = _mm256_set1_ps(f1), t2 = _mm256_set1_ps(f2);
    __m256d a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    __m256d t0 = zero, tt1 = zero, tt2 = zero, tt3 = zero, u0 = zero, u1 = zero, u2 = zero, u3 = zero;
    __m256 vlo = inf, vhi = fzero;
    __m256i cn = _mm256_setzero_si256(), vn = cn, v1 = cn, v2 = cn;
    int64_t body = n - n % LANES, tail = n - body, total = 0, pending = 0;
    for (int64_t start = 0; start < body; start += STATS_BLOCK) {
        int64_t end = body - start > STATS_BLOCK ? start + STATS_BLOCK : body;
        for (int64_t p = start; p < end; p += LANES) {
            __m256 f0 = _mm256_loadu_ps(x + p), f8 = _mm256_loadu_ps(x + p + 8);
            ADD8(f0, a0, a1, b0, b1, cn);
            ADD8(f8, a2, a3, b2, b3, cn);
        }
        for (int64_t p = start; p < end; p += 8) {
            __m256 v = _mm256_loadu_ps(x + p), a = _mm256_andnot_ps(sign, v);
            __m256 live = _mm256_cmp_ps(a, fzero, _CMP_GT_OQ);
            vlo = _mm256_min_ps(_mm256_blendv_ps(inf, a, live), vlo);
            vhi = _mm256_max_ps(a, vhi); /* a NaN: the second operand, vhi, is kept */
            vn = _mm256_sub_epi32(vn, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
            v1 = _mm256_sub_epi32(v1, _mm256_castps_si256(_mm256_and_ps(live, _mm256_cmp_ps(a, t1, _CMP_LT_OQ))));
            v2 = _mm256_sub_epi32(v2, _mm256_castps_si256(_mm256_and_ps(live, _mm256_cmp_ps(a, t2, _CMP_LT_OQ))));
        }
        pending += end - start; /* each int32 lane has counted at most one in eight of the values read */
        if (pending >= COUNT_CHUNK) {
            total += lanes_total(cn);
            *nan += lanes_total(vn);
            *c1 += lanes_total(v1);
            *c2 += lanes_total(v2);
            cn = vn = v1 = v2 = _mm256_setzero_si256();
            pending = 0;
        }
    }
    if (tail > 0) {
        __m256 f0 = _mm256_maskload_ps(x + body, tail_mask(tail));
        __m256 f8 = _mm256_maskload_ps(x + body + 8, tail_mask(tail - 8));
        ADD8(f0, t0, tt1, u0, u1, cn);
        ADD8(f8, tt2, tt3, u2, u3, cn);
    }
    *nan += lanes_total(vn);
    *c1 += lanes_total(v1);
    *c2 += lanes_total(v2);
    fold_magnitudes(vlo, vhi, lo, hi);
    magnitudes_c(x + body, tail, f1, f2, lo, hi, nan, c1, c2);
    const __m256d lanes[4][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}, {t0, tt1, tt2, tt3}, {u0, u1, u2, u3}};
    fold_registers(lanes, total + lanes_total(cn), s1, s2, nz);
}
#endif

INITDIAG_EXPORT int initdiag_abs_stats(const float *x, int64_t n, double t1, double t2, double *out) {
    if (n < 0 || out == NULL || (x == NULL && n > 0)) {
        return -1;
    }
    double s1 = 0.0, s2 = 0.0, nz = 0.0;
    float lo = INFINITY, hi = 0.0f;
    int64_t nan = 0, c1 = 0, c2 = 0;
    if (n > 0) {
#if defined(AVX2_SUMS)
        if (avx2_sums()) {
            abs_stats_avx2(x, n, (float) t1, (float) t2, &s1, &s2, &nz, &lo, &hi, &nan, &c1, &c2);
        } else
#endif
        {
            channel_runs(x, 1, 0, n, &s1, &s2, &nz); /* one run of n values: the moments' own sums, bit for bit */
            magnitudes_c(x, n, (float) t1, (float) t2, &lo, &hi, &nan, &c1, &c2);
        }
    }
    out[0] = s1;
    out[1] = s2 > FLT_MAX ? INFINITY : s2;
    out[2] = nz;
    out[3] = nan ? NAN : (double) lo;
    out[4] = nan || isinf(hi) ? INFINITY : (double) hi;
    out[5] = (double) c1;
    out[6] = (double) c2;
    return 0;
}
