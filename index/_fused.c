/* Fused gather + reconstruct + dot products + max: the inner loop of PLAID's scoring stages on CPU.
 *
 * For i < n, t < lqp:  best[rows[i], t] = max(best[rows[i], t], sum_d v_i[d] * qT[d, t])
 * where v_i is row pos[i] of
 *   gather_max:       fp16 originals vec [T, dim] (raw uint16), or
 *   scores:           float32 rows table [n, dim] in order (pos[i] = rows[i] = i; the centroid scores,
 *                     stored: best[i, t] = the product), or
 *   gather_max_codes: a compressed vector: centroids[codes[pos[i]]] + the residual that the bytes
 *                     packed[pos[i], :] select in the lookup table lut [B * 256, per] (byte j with value
 *                     b adds lut[j * 256 + b] to dims j * per .. j * per + per - 1), divided by its norm
 *                     when `normalize` is set (ResidualCodec.decompress, fused).
 * pos and rows are int64 [n], the query float32 [lqp, dim], best float32 [m, lqp]. Arguments are raw
 * addresses: the Python wrappers (tessera.index.kernels, ResidualCodec.score_max) check dtypes, shapes
 * and bounds. lqp and dim must be multiples of 16, dim at most MAX_DIM.
 *
 * Without the intermediate [n, dim] fp32 copy and [n, lqp] similarity matrix that numpy/torch would
 * materialise, rows are rebuilt in a small buffer, prefetched ahead of use, and the query stays in L1.
 * Kernels for AVX-512F and for AVX2+FMA+F16C are chosen at run time, plus, where the CPU has
 * AVX512-BF16, one for jobs whose operands are rounded to bfloat16 (`bf16`: PLAID's pruning stages);
 * on other CPUs the functions return False and the caller uses its torch path. One or two threads per call (run_split); the GIL is
 * released while it runs, so concurrent searches (the service's workers) run their kernels in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DIM 1024
#define MAX_LQ 1024
#define SPLIT_MIN 1024 /* vectors: fewer are scored on one thread even when two are allowed */
#define CHUNK 512      /* vectors a thread takes at a time (a multiple of ROWS; see run_split) */
#define PREFETCH_AHEAD 8 /* vectors: all their cache lines */
#define PREFETCH_FAR 64  /* vectors: one line each, so that the page walk (costly in a VM) starts early */

typedef struct job {
    /* fp16 originals */
    const uint16_t *vec;
    /* or float32 rows, read in order (pos and rows NULL: row i goes to best row i) */
    const float *vec32;
    /* or compressed vectors */
    const float *centroids;
    const int32_t *codes;
    const uint8_t *packed;
    const float *lut;
    int64_t nbytes, per;
    int normalize;
    /* common */
    int64_t dim;
    const int64_t *pos;
    const int64_t *rows;
    int64_t n;          /* vectors in all (prefetching looks ahead up to here) */
    int64_t begin, end; /* the vectors [begin, end) this call scores */
    const float *qT;
    const uint16_t *qP; /* for kernel_bf16: the query as bfloat16 pairs [dim / 2, lqp, 2] */
    int64_t lqp;
    float *best;
    int64_t m;  /* rows of best */
    int assign; /* store the products instead of maxing them into best (rows in order only) */
    /* for the centroid scores: each row's max over the first lq columns into rowmax, and per chunk of
     * CHUNK rows each column's max and its first row into colmax / arg [chunks, lq] */
    float *rowmax, *colmax;
    int32_t *arg;
    int64_t lq;
    /* bf16: the operands are rounded to bfloat16 (a rebuilt vector after its normalisation), products
     * summed in float32; by kernel_bf16, or by a float32 kernel on rows that load_rows rounds
     * (round_rows) and a rounded query */
    int bf16, round_rows;
    void (*kernel)(const struct job *); /* KERNEL, or KERNEL_BF16 for bf16 jobs where the CPU has it */
} job_t;

typedef void (*kernel_t)(const job_t *);

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

static inline void prefetch(const job_t *j, int64_t from, int64_t to) {
    if (j->pos == NULL) return; /* rows in order: the hardware prefetcher sees them coming */
    for (int64_t k = from; k < to && k < j->n; k++) {
        const int64_t p = j->pos[k];
        if (j->vec != NULL) {
            const char *r = (const char *)(j->vec + p * j->dim);
            for (int64_t b = 0; b < j->dim * 2; b += 64) _mm_prefetch(r + b, _MM_HINT_T0);
        } else {
            _mm_prefetch((const char *)(j->codes + p), _MM_HINT_T0);
            _mm_prefetch((const char *)(j->packed + p * j->nbytes), _MM_HINT_T0);
        }
    }
}

static inline void prefetch_far(const job_t *j, int64_t from, int64_t to) {
    if (j->pos == NULL) return;
    for (int64_t k = from; k < to && k < j->n; k++) {
        const int64_t p = j->pos[k];
        if (j->vec != NULL) {
            _mm_prefetch((const char *)(j->vec + p * j->dim), _MM_HINT_T2);
        } else {
            _mm_prefetch((const char *)(j->packed + p * j->nbytes), _MM_HINT_T2);
        }
    }
}

/* Rebuilds compressed vector `p` into buf (float32 [dim]); returns the factor its products take
 * (1 / its norm when the codec normalises, else 1). SSE, the x86-64 baseline, for groups of 4 dims. */
static inline float rebuild(const job_t *j, int64_t p, float *buf) {
    const float *c = j->centroids + (int64_t)j->codes[p] * j->dim;
    const uint8_t *b = j->packed + p * j->nbytes;
    const int64_t per = j->per;
    if (per % 4 == 0) {
        for (int64_t k = 0; k < j->nbytes; k++) {
            const float *l = j->lut + ((k << 8) + b[k]) * per;
            for (int64_t e = 0; e < per; e += 4)
                _mm_storeu_ps(buf + k * per + e, _mm_add_ps(_mm_loadu_ps(c + k * per + e), _mm_loadu_ps(l + e)));
        }
    } else {
        for (int64_t k = 0; k < j->nbytes; k++) {
            const float *l = j->lut + ((k << 8) + b[k]) * per;
            for (int64_t e = 0; e < per; e++) buf[k * per + e] = c[k * per + e] + l[e];
        }
    }
    if (!j->normalize) return 1.0f;
    __m128 s0 = _mm_setzero_ps(), s1 = s0;
    for (int64_t d = 0; d < j->dim; d += 8) {
        const __m128 x0 = _mm_loadu_ps(buf + d), x1 = _mm_loadu_ps(buf + d + 4);
        s0 = _mm_add_ps(s0, _mm_mul_ps(x0, x0));
        s1 = _mm_add_ps(s1, _mm_mul_ps(x1, x1));
    }
    float t[4];
    _mm_storeu_ps(t, _mm_add_ps(s0, s1));
    const float norm = sqrtf((t[0] + t[1]) + (t[2] + t[3]));
    return 1.0f / (norm > 1e-12f ? norm : 1e-12f);
}

static inline int64_t out_row(const job_t *j, int64_t i) { return j->rows != NULL ? j->rows[i] : i; }

/* Rounds the n floats of x (n a multiple of 8) to bfloat16 precision, to nearest even (as vcvtne2ps2bf16
 * and to_bf16 round finite values). */
__attribute__((target("avx2"))) static inline void round_bf16(float *x, int64_t n) {
    const __m256i half = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), top = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int64_t d = 0; d < n; d += 8) {
        __m256i u = _mm256_castps_si256(_mm256_load_ps(x + d));
        u = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        _mm256_store_ps(x + d, _mm256_castsi256_ps(_mm256_and_si256(u, top)));
    }
}

/* Loads rows i .. i + ROWS - 1 (fewer at the end: the missing ones repeat row i and are not stored)
 * into buf as float32, prefetching those PREFETCH_AHEAD further on (and the first line of those
 * PREFETCH_FAR further on); returns how many are real. */
#define ROWS 4
__attribute__((target("avx2,fma,f16c"))) static inline int load_rows(const job_t *j, int64_t i,
                                                                     float buf[ROWS][MAX_DIM], float scale[ROWS]) {
    const int cnt = (j->end - i < ROWS) ? (int)(j->end - i) : ROWS;
    prefetch(j, i + PREFETCH_AHEAD, i + PREFETCH_AHEAD + ROWS);
    prefetch_far(j, i + PREFETCH_FAR, i + PREFETCH_FAR + ROWS);
    for (int v = 0; v < ROWS; v++) {
        const int64_t p = j->pos != NULL ? j->pos[i + (v < cnt ? v : 0)] : i + (v < cnt ? v : 0);
        if (j->vec32 != NULL) {
            memcpy(buf[v], j->vec32 + p * j->dim, (size_t)j->dim * sizeof(float));
            scale[v] = 1.0f;
        } else if (j->vec != NULL) {
            const uint16_t *r = j->vec + p * j->dim;
            for (int64_t d = 0; d < j->dim; d += 8)
                _mm256_store_ps(buf[v] + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + d))));
            scale[v] = 1.0f;
        } else {
            scale[v] = rebuild(j, p, buf[v]);
        }
        if (j->bf16 && scale[v] != 1.0f) { /* the normalised vector is what is rounded */
            const __m256 f = _mm256_set1_ps(scale[v]);
            for (int64_t d = 0; d < j->dim; d += 8) _mm256_store_ps(buf[v] + d, _mm256_mul_ps(_mm256_load_ps(buf[v] + d), f));
            scale[v] = 1.0f;
        }
        if (j->round_rows) round_bf16(buf[v], j->dim);
    }
    return cnt;
}

/* o = max(o, v), or o = v for jobs that assign (each output written once: the centroid scores). */
__attribute__((target("avx512f"))) static inline void put16(float *o, __m512 v, int assign) {
    _mm512_storeu_ps(o, assign ? v : _mm512_max_ps(_mm512_loadu_ps(o), v));
}

__attribute__((target("avx2"))) static inline void put8(float *o, __m256 v, int assign) {
    _mm256_storeu_ps(o, assign ? v : _mm256_max_ps(_mm256_loadu_ps(o), v));
}

/* Puts the accumulators of rows i .. i + cnt - 1 into their best rows (put16), for w blocks of 16 query
 * tokens from block tb: acc[v * w + b] is row v's block b, to be multiplied by scale[v]. */
__attribute__((target("avx512f"))) static inline void put_rows16(const job_t *j, int64_t i, int64_t tb, int cnt,
                                                                 const float *scale, const __m512 *acc, int w) {
    for (int v = 0; v < cnt; v++) {
        const __m512 s = _mm512_set1_ps(scale[v]);
        float *o = j->best + out_row(j, i + v) * j->lqp + tb * 16;
        for (int b = 0; b < w; b++) put16(o + 16 * b, _mm512_mul_ps(acc[v * w + b], s), j->assign);
    }
}

/* AVX-512: 4 vectors x 32 query tokens per pass (8 accumulators of 16 floats). */
__attribute__((target("avx512f"))) static void kernel_avx512(const job_t *j) {
    float buf[ROWS][MAX_DIM] __attribute__((aligned(64)));
    float scale[ROWS];
    const int64_t dim = j->dim, lqp = j->lqp, nblk = lqp / 16;
    for (int64_t i = j->begin; i < j->end; i += ROWS) {
        const int cnt = load_rows(j, i, buf, scale);
        int64_t tb = 0;
        for (; tb + 2 <= nblk; tb += 2) {
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
            __m512 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            const float *q = j->qT + tb * 16;
            for (int64_t d = 0; d < dim; d++) {
                const float *qd = q + d * lqp;
                const __m512 q0 = _mm512_loadu_ps(qd), q1 = _mm512_loadu_ps(qd + 16);
                __m512 x = _mm512_set1_ps(buf[0][d]);
                a00 = _mm512_fmadd_ps(x, q0, a00);
                a01 = _mm512_fmadd_ps(x, q1, a01);
                x = _mm512_set1_ps(buf[1][d]);
                a10 = _mm512_fmadd_ps(x, q0, a10);
                a11 = _mm512_fmadd_ps(x, q1, a11);
                x = _mm512_set1_ps(buf[2][d]);
                a20 = _mm512_fmadd_ps(x, q0, a20);
                a21 = _mm512_fmadd_ps(x, q1, a21);
                x = _mm512_set1_ps(buf[3][d]);
                a30 = _mm512_fmadd_ps(x, q0, a30);
                a31 = _mm512_fmadd_ps(x, q1, a31);
            }
            const __m512 acc[8] = {a00, a01, a10, a11, a20, a21, a30, a31};
            put_rows16(j, i, tb, cnt, scale, acc, 2);
        }
        for (; tb < nblk; tb++) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const float *q = j->qT + tb * 16;
            for (int64_t d = 0; d < dim; d++) {
                const __m512 qv = _mm512_loadu_ps(q + d * lqp);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(buf[0][d]), qv, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(buf[1][d]), qv, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(buf[2][d]), qv, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(buf[3][d]), qv, a3);
            }
            const __m512 acc[4] = {a0, a1, a2, a3};
            put_rows16(j, i, tb, cnt, scale, acc, 1);
        }
    }
}

/* AVX2: 4 vectors x 16 query tokens per pass (8 accumulators of 8 floats); 4 rows in flight, as for
 * AVX-512, which matters more than register width for rows gathered from random places. */
__attribute__((target("avx2,fma,f16c"))) static void kernel_avx2(const job_t *j) {
    float buf[ROWS][MAX_DIM] __attribute__((aligned(64)));
    float scale[ROWS];
    const int64_t dim = j->dim, lqp = j->lqp;
    for (int64_t i = j->begin; i < j->end; i += ROWS) {
        const int cnt = load_rows(j, i, buf, scale);
        for (int64_t tb = 0; tb < lqp; tb += 16) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
            __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            const float *q = j->qT + tb;
            for (int64_t d = 0; d < dim; d++) {
                const float *qd = q + d * lqp;
                const __m256 q0 = _mm256_loadu_ps(qd), q1 = _mm256_loadu_ps(qd + 8);
                __m256 x = _mm256_broadcast_ss(buf[0] + d);
                a00 = _mm256_fmadd_ps(x, q0, a00);
                a01 = _mm256_fmadd_ps(x, q1, a01);
                x = _mm256_broadcast_ss(buf[1] + d);
                a10 = _mm256_fmadd_ps(x, q0, a10);
                a11 = _mm256_fmadd_ps(x, q1, a11);
                x = _mm256_broadcast_ss(buf[2] + d);
                a20 = _mm256_fmadd_ps(x, q0, a20);
                a21 = _mm256_fmadd_ps(x, q1, a21);
                x = _mm256_broadcast_ss(buf[3] + d);
                a30 = _mm256_fmadd_ps(x, q0, a30);
                a31 = _mm256_fmadd_ps(x, q1, a31);
            }
            const __m256 acc[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
            for (int v = 0; v < cnt; v++) {
                const __m256 s = _mm256_set1_ps(scale[v]);
                float *o = j->best + out_row(j, i + v) * lqp + tb;
                put8(o, _mm256_mul_ps(acc[v][0], s), j->assign);
                put8(o + 8, _mm256_mul_ps(acc[v][1], s), j->assign);
            }
        }
    }
}

/* AVX512-BF16, for bf16 jobs (PLAID's pruning stages, whose survivors are scored again in float32):
 * each vector, loaded as float32 as above, is rounded to bfloat16 and multiplied with the query, also in
 * bfloat16 (qP, pairs of dims interleaved per token), two dims per instruction with float32 sums
 * (vdpbf16ps): half the instructions of the float32 kernel. The products of bfloat16 values are exact
 * in float32, so this gives what a float32 kernel gives on the rounded operands, up to the order of the
 * sums. 4 vectors x 32 query tokens per pass, as kernel_avx512. */
__attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma,f16c"))) static void kernel_bf16(const job_t *j) {
    float buf[ROWS][MAX_DIM] __attribute__((aligned(64)));
    uint32_t pairs[ROWS][MAX_DIM / 2] __attribute__((aligned(64)));
    float scale[ROWS];
    const int64_t half = j->dim / 2, lqp = j->lqp, nblk = lqp / 16;
    for (int64_t i = j->begin; i < j->end; i += ROWS) {
        const int cnt = load_rows(j, i, buf, scale);
        for (int v = 0; v < ROWS; v++)
            for (int64_t d = 0; d < j->dim; d += 32)
                _mm512_store_si512((void *)(pairs[v] + d / 2),
                                   (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(buf[v] + d + 16), _mm512_load_ps(buf[v] + d)));
        int64_t tb = 0;
        for (; tb + 2 <= nblk; tb += 2) {
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
            __m512 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            const uint16_t *q = j->qP + tb * 32;
            for (int64_t d = 0; d < half; d++) {
                const uint16_t *qd = q + d * lqp * 2;
                const __m512bh q0 = (__m512bh)_mm512_loadu_si512(qd), q1 = (__m512bh)_mm512_loadu_si512(qd + 32);
                __m512bh x = (__m512bh)_mm512_set1_epi32((int)pairs[0][d]);
                a00 = _mm512_dpbf16_ps(a00, x, q0);
                a01 = _mm512_dpbf16_ps(a01, x, q1);
                x = (__m512bh)_mm512_set1_epi32((int)pairs[1][d]);
                a10 = _mm512_dpbf16_ps(a10, x, q0);
                a11 = _mm512_dpbf16_ps(a11, x, q1);
                x = (__m512bh)_mm512_set1_epi32((int)pairs[2][d]);
                a20 = _mm512_dpbf16_ps(a20, x, q0);
                a21 = _mm512_dpbf16_ps(a21, x, q1);
                x = (__m512bh)_mm512_set1_epi32((int)pairs[3][d]);
                a30 = _mm512_dpbf16_ps(a30, x, q0);
                a31 = _mm512_dpbf16_ps(a31, x, q1);
            }
            const __m512 acc[8] = {a00, a01, a10, a11, a20, a21, a30, a31};
            put_rows16(j, i, tb, cnt, scale, acc, 2);
        }
        for (; tb < nblk; tb++) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const uint16_t *q = j->qP + tb * 32;
            for (int64_t d = 0; d < half; d++) {
                const __m512bh qv = (__m512bh)_mm512_loadu_si512(q + d * lqp * 2);
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_set1_epi32((int)pairs[0][d]), qv);
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_set1_epi32((int)pairs[1][d]), qv);
                a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_set1_epi32((int)pairs[2][d]), qv);
                a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_set1_epi32((int)pairs[3][d]), qv);
            }
            const __m512 acc[4] = {a0, a1, a2, a3};
            put_rows16(j, i, tb, cnt, scale, acc, 1);
        }
    }
}

__attribute__((target("avx2"))) static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* The reductions of a scores job over its rows [begin, end), just written (still in cache). */
__attribute__((target("avx2"))) static void reduce_chunk(const job_t *j) {
    const int64_t lq = j->lq, lq8 = lq / 8 * 8, c = j->begin / CHUNK;
    float *cm = j->colmax + c * lq;
    int32_t *ca = j->arg + c * lq;
    for (int64_t t = 0; t < lq; t++) cm[t] = -INFINITY, ca[t] = 0;
    for (int64_t i = j->begin; i < j->end; i++) {
        const float *o = j->best + i * j->lqp;
        const __m256 row = _mm256_castsi256_ps(_mm256_set1_epi32((int32_t)i));
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (int64_t t = 0; t < lq8; t += 8) {
            const __m256 v = _mm256_loadu_ps(o + t), cur = _mm256_loadu_ps(cm + t);
            const __m256 gt = _mm256_cmp_ps(v, cur, _CMP_GT_OQ); /* strictly: the first row keeps a tie */
            m = _mm256_max_ps(m, v);
            _mm256_storeu_ps(cm + t, _mm256_blendv_ps(cur, v, gt));
            const __m256 a = _mm256_loadu_ps((const float *)(ca + t));
            _mm256_storeu_ps((float *)(ca + t), _mm256_blendv_ps(a, row, gt));
        }
        float rm = hmax8(m);
        for (int64_t t = lq8; t < lq; t++) {
            rm = o[t] > rm ? o[t] : rm;
            if (o[t] > cm[t]) cm[t] = o[t], ca[t] = (int32_t)i;
        }
        j->rowmax[i] = rm;
    }
}

static kernel_t pick_kernel(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return kernel_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return kernel_avx2;
    return NULL;
}

static const char *kernel_name(kernel_t k) {
    return k == kernel_avx512 ? "avx512" : k == kernel_avx2 ? "avx2" : "none";
}

static kernel_t pick_bf16(kernel_t k) {
    __builtin_cpu_init();
    return k == kernel_avx512 && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw")
               ? kernel_bf16
               : NULL;
}
#else
static kernel_t pick_bf16(kernel_t k) { (void)k; return NULL; }
static void reduce_chunk(const job_t *j) { (void)j; } /* never called: there is no kernel */
static kernel_t pick_kernel(void) { return NULL; }
static const char *kernel_name(kernel_t k) { (void)k; return "none"; }
#endif

static kernel_t KERNEL = NULL;
static kernel_t KERNEL_BF16 = NULL; /* for bf16 jobs where the CPU has AVX512-BF16 (see bf16_kernel) */

/* A second thread for run_split: one worker, started at the first split and kept. After a job it spins
 * (SPIN_US) for the next one, so that the calls of one search, a few hundred microseconds apart, do not
 * each pay a thread start or a wake-up (about 100 us on a virtual machine, as much as the work they
 * split); then it sleeps on a condition variable. One caller owns it at a time; others, e.g. concurrent
 * searches, run on their own thread. The vectors are taken CHUNK at a time from a shared counter, so
 * that when the worker is late (asleep, or its core busy) the caller does the work alone, never waiting
 * for it to start. */
#define SPIN_US 500                /* how long the idle worker polls before it sleeps */
#define KEEP_FLOATS (1 << 20)      /* the worker's copy of best is kept between calls up to this size */
enum { IDLE, POSTED, JOINED };     /* a job's state: the worker joins it or the caller takes it back */

static struct {
    pthread_mutex_t lock; /* guards sleeping, started and the condition */
    pthread_cond_t wake;
    int started, sleeping;
    atomic_int owned;     /* a caller uses the worker */
    atomic_int state;     /* IDLE, POSTED, JOINED */
    atomic_int done;      /* the worker has left the joined job */
    atomic_llong next;    /* next chunk to take */
    const job_t *job;
    float *mine;          /* the worker's rows of best for gathered jobs, grown as needed */
    size_t cap;
    int used;             /* mine holds results to merge */
    atomic_llong joined;  /* jobs the worker took part in (for tests) */
} W = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

static inline int64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* Scores chunk c of the job (vectors [c * CHUNK, (c + 1) * CHUNK) or to the end) into `best`, and for a
 * centroid-scores job reduces its rows. */
static void run_chunk(const job_t *job, float *best, int64_t c) {
    job_t part = *job;
    part.best = best;
    part.begin = c * CHUNK;
    part.end = part.begin + CHUNK < job->n ? part.begin + CHUNK : job->n;
    part.kernel(&part);
    if (part.rowmax != NULL) reduce_chunk(&part);
}

/* Scores the job's chunks until none is left, into `best` (the job's own), or for the worker into what
 * `rows_for` gives before its first chunk (NULL: it takes none). */
static void take_chunks(const job_t *job, float *best, float *(*rows_for)(const job_t *)) {
    for (int first = 1;; first = 0) {
        if (first && rows_for != NULL) { /* the worker: only where chunks are left */
            if (atomic_load(&W.next) * CHUNK >= job->n || (best = rows_for(job)) == NULL) return;
        }
        const int64_t c = atomic_fetch_add(&W.next, 1);
        if (c * CHUNK >= job->n) return;
        run_chunk(job, best, c);
    }
}

/* Where the worker's chunks go: rows in order (rows NULL) have rows of their own in each chunk and are
 * written in place; gathered ones into the worker's copy of best, filled with -inf. */
static float *worker_rows(const job_t *job) {
    if (job->rows == NULL) return job->best;
    const size_t floats = (size_t)(job->m * job->lqp);
    if (floats > W.cap) {
        free(W.mine);
        W.mine = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        W.cap = W.mine != NULL ? floats : 0;
        if (W.mine == NULL) return NULL;
    }
    for (size_t i = 0; i < floats; i++) W.mine[i] = -INFINITY;
    W.used = 1;
    return W.mine;
}

static void *worker_main(void *unused) {
    (void)unused;
    int64_t idle_since = now_us();
    for (;;) {
        int posted = POSTED;
        if (atomic_load(&W.state) == POSTED && atomic_compare_exchange_strong(&W.state, &posted, JOINED)) {
            const job_t *job = W.job;
            atomic_fetch_add(&W.joined, 1);
            take_chunks(job, NULL, worker_rows);
            atomic_store(&W.done, 1);
            idle_since = now_us();
            continue;
        }
        if (now_us() - idle_since < SPIN_US) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&W.lock);
        W.sleeping = 1;
        while (atomic_load(&W.state) != POSTED) pthread_cond_wait(&W.wake, &W.lock);
        W.sleeping = 0;
        pthread_mutex_unlock(&W.lock);
    }
    return NULL;
}

static void forget_worker(void) { /* in a forked child: the worker thread is not there */
    pthread_mutex_init(&W.lock, NULL);
    pthread_cond_init(&W.wake, NULL);
    W.started = W.sleeping = 0;
    atomic_store(&W.owned, 0);
    atomic_store(&W.state, IDLE);
}

/* Takes the worker for one job (0: another caller has it, or it cannot start). */
static int own_worker(void) {
    int nobody = 0;
    if (!atomic_compare_exchange_strong(&W.owned, &nobody, 1)) return 0;
    pthread_mutex_lock(&W.lock);
    if (!W.started) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        W.started = pthread_create(&thread, &attr, worker_main, NULL) == 0;
        pthread_attr_destroy(&attr);
        static int hooked = 0;
        if (W.started && !hooked) hooked = pthread_atfork(NULL, NULL, forget_worker) == 0;
    }
    const int ok = W.started;
    pthread_mutex_unlock(&W.lock);
    if (!ok) atomic_store(&W.owned, 0);
    return ok;
}

/* Runs the job on `threads` (1 or 2) threads (see W above); the worker's rows of a gathered job (rows
 * of both threads may coincide) are maxed into best at the end. */
static void run_split(job_t *job, int threads) {
    job->begin = 0;
    job->end = job->n;
    if (threads < 2 || job->n < SPLIT_MIN || job->m <= 0 || !own_worker()) {
        if (job->rowmax == NULL) {
            job->kernel(job);
            return;
        }
        for (int64_t c = 0; c * CHUNK < job->n; c++) run_chunk(job, job->best, c); /* reduced while in cache */
        return;
    }
    W.job = job;
    W.used = 0;
    atomic_store(&W.next, 0);
    atomic_store(&W.done, 0);
    atomic_store(&W.state, POSTED);
    pthread_mutex_lock(&W.lock);
    if (W.sleeping) pthread_cond_signal(&W.wake);
    pthread_mutex_unlock(&W.lock);
    take_chunks(job, job->best, NULL);
    int posted = POSTED;
    if (!atomic_compare_exchange_strong(&W.state, &posted, IDLE)) { /* the worker joined: wait for it */
        while (!atomic_load(&W.done)) cpu_relax();
        if (W.used) {
            const size_t floats = (size_t)(job->m * job->lqp);
            for (size_t i = 0; i < floats; i++) job->best[i] = W.mine[i] > job->best[i] ? W.mine[i] : job->best[i];
        }
        if (W.cap > KEEP_FLOATS) { /* kept between calls only up to 4 MB */
            free(W.mine);
            W.mine = NULL;
            W.cap = 0;
        }
        atomic_store(&W.state, IDLE);
    }
    atomic_store(&W.owned, 0);
}

/* The float32 x to bfloat16, rounded to nearest even (as vcvtne2ps2bf16 rounds finite values). */
static inline uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Fills the operands the entry points share, checks them, lays the query [lqp, dim] out as qT
 * [dim, lqp] (or, for the bfloat16 kernel, as qP) and runs the kernel without the GIL, on `threads`
 * threads (best has m rows). `bf16`: operands rounded to bfloat16 (see job_t). */
static PyObject *run_job(job_t *job, Py_ssize_t dim, Py_ssize_t pos, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t q,
                         Py_ssize_t lqp, Py_ssize_t best, Py_ssize_t m, int threads, int bf16) {
    if (dim <= 0 || dim > MAX_DIM || dim % 16 || lqp <= 0 || lqp % 16 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "dim and lqp must be positive multiples of 16, dim <= 1024");
        return NULL;
    }
    job->kernel = bf16 && KERNEL_BF16 != NULL && dim % 32 == 0 ? KERNEL_BF16 : KERNEL;
    job->bf16 = bf16;
    job->round_rows = bf16 && job->kernel != KERNEL_BF16;
    const float *query = (const float *)q;
    float *qT = NULL;
    uint16_t *qP = NULL;
    if (job->kernel == KERNEL_BF16) {
        if ((qP = aligned_alloc(64, (size_t)(dim * lqp) * sizeof(uint16_t))) == NULL) return PyErr_NoMemory();
        for (Py_ssize_t t = 0; t < lqp; t++)
            for (Py_ssize_t d = 0; d < dim; d++) qP[(d / 2) * lqp * 2 + t * 2 + d % 2] = to_bf16(query[t * dim + d]);
    } else {
        if ((qT = aligned_alloc(64, (size_t)(dim * lqp) * sizeof(float))) == NULL) return PyErr_NoMemory();
        for (Py_ssize_t t = 0; t < lqp; t++)
            for (Py_ssize_t d = 0; d < dim; d++) {
                float x = query[t * dim + d];
                if (bf16) { /* rounded as qP would be */
                    const uint32_t r = (uint32_t)to_bf16(x) << 16;
                    memcpy(&x, &r, sizeof x);
                }
                qT[d * lqp + t] = x;
            }
    }
    job->dim = dim;
    job->pos = (const int64_t *)pos;
    job->rows = (const int64_t *)rows;
    job->n = n;
    job->qT = qT;
    job->qP = qP;
    job->lqp = lqp;
    job->best = (float *)best;
    job->m = m;
    Py_BEGIN_ALLOW_THREADS run_split(job, threads);
    Py_END_ALLOW_THREADS free(qT);
    free(qP);
    Py_RETURN_TRUE;
}

static PyObject *gather_max(PyObject *self, PyObject *args) {
    Py_ssize_t vec, dim, pos, rows, n, q, lqp, best, m;
    int threads, bf16;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnip", &vec, &dim, &pos, &rows, &n, &q, &lqp, &best, &m, &threads, &bf16))
        return NULL;
    if (KERNEL == NULL) Py_RETURN_FALSE;
    job_t job = {0};
    job.vec = (const uint16_t *)vec;
    return run_job(&job, dim, pos, rows, n, q, lqp, best, m, threads, bf16);
}

static PyObject *scores(PyObject *self, PyObject *args) {
    Py_ssize_t table, dim, n, q, lq, lqp, out, rowmax, argmax;
    int threads, bf16;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnip", &table, &dim, &n, &q, &lq, &lqp, &out, &rowmax, &argmax, &threads,
                          &bf16))
        return NULL;
    if (KERNEL == NULL) Py_RETURN_FALSE;
    if (lq <= 0 || lq > lqp || lq > MAX_LQ) {
        PyErr_SetString(PyExc_ValueError, "scores: need 0 < lq <= lqp and lq <= 1024");
        return NULL;
    }
    job_t job = {0};
    job.vec32 = (const float *)table;
    job.assign = 1;
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
    if (rowmax != 0 && n > 0) {
        job.rowmax = (float *)rowmax;
        job.lq = lq;
        job.colmax = malloc((size_t)(chunks * lq) * (sizeof(float) + sizeof(int32_t)));
        if (job.colmax == NULL) return PyErr_NoMemory();
        job.arg = (int32_t *)(job.colmax + chunks * lq);
    }
    PyObject *ran = run_job(&job, dim, 0, 0, n, q, lqp, out, n, threads, bf16);
    if (ran != NULL && job.rowmax != NULL) { /* each column's best over the chunks, in order: the first row on ties */
        int64_t *am = (int64_t *)argmax;
        for (int64_t t = 0; t < lq; t++) {
            float best = job.colmax[t];
            int32_t at = job.arg[t];
            for (int64_t c = 1; c < chunks; c++)
                if (job.colmax[c * lq + t] > best) best = job.colmax[c * lq + t], at = job.arg[c * lq + t];
            am[t] = at;
        }
    }
    free(job.colmax);
    return ran;
}

static PyObject *gather_max_codes(PyObject *self, PyObject *args) {
    Py_ssize_t centroids, codes, packed, nbytes, lut, per, dim, pos, rows, n, q, lqp, best, m;
    int normalize, threads, bf16;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnpnnnnnnnnip", &centroids, &codes, &packed, &nbytes, &lut, &per, &normalize,
                          &dim, &pos, &rows, &n, &q, &lqp, &best, &m, &threads, &bf16))
        return NULL;
    if (KERNEL == NULL) Py_RETURN_FALSE;
    if (per <= 0 || nbytes * per != dim) {
        PyErr_SetString(PyExc_ValueError, "bytes per vector x dims per byte must equal dim");
        return NULL;
    }
    job_t job = {0};
    job.centroids = (const float *)centroids;
    job.codes = (const int32_t *)codes;
    job.packed = (const uint8_t *)packed;
    job.nbytes = nbytes;
    job.lut = (const float *)lut;
    job.per = per;
    job.normalize = normalize;
    return run_job(&job, dim, pos, rows, n, q, lqp, best, m, threads, bf16);
}

/* Positions to score, found in C (one pass, no temporaries) and checked against the tables' sizes, so
 * that the kernel may trust them. select_ivf and select_tokens fill out_pos/out_rows (int64, room for
 * `cap`) and return the count; with cap < 0 they only return the room the output needs. IndexError on
 * an id out of range, ValueError when the output is too small. */

/* What a selection returns: its count, or the error its pass met (bad 1: an id out of range, naming
 * which ids `ids` are; bad 2: the output was too small). */
static PyObject *selected(int bad, int64_t n, const char *name, const char *ids) {
    if (bad == 1) return PyErr_Format(PyExc_IndexError, "%s: %s is out of range", name, ids);
    if (bad == 2) return PyErr_Format(PyExc_ValueError, "%s: output too small", name);
    return PyLong_FromLongLong(n);
}

/* Reorders the n pairs (pos, rows), rows below m, by row (a stable counting sort), so that the kernel
 * reads each document's vectors together, near each other in memory, rather than in centroid order all
 * over the table. Leaves them as they are when it cannot allocate. */
static void sort_by_row(int64_t *pos, int64_t *rows, int64_t n, int64_t m) {
    if (n < 2 || m < 2) return;
    int64_t *start = calloc((size_t)m + 1 + 2 * (size_t)n, sizeof(int64_t));
    if (start == NULL) return;
    int64_t *tpos = start + m + 1, *trows = tpos + n;
    for (int64_t i = 0; i < n; i++) start[rows[i] + 1]++;
    for (int64_t r = 0; r < m; r++) start[r + 1] += start[r];
    for (int64_t i = 0; i < n; i++) {
        const int64_t j = start[rows[i]]++;
        tpos[j] = pos[i];
        trows[j] = rows[i];
    }
    memcpy(pos, tpos, (size_t)n * sizeof(int64_t));
    memcpy(rows, trows, (size_t)n * sizeof(int64_t));
    free(start);
}

/* select_ivf: the vectors of centroids kept[0..nk) (inverted lists voff [C+1] int64 into order / docs
 * [T] int32: vector positions in centroid order and their local documents) whose document d has
 * rowmap[d] >= 0 (int64 [n_docs]; the output row, below m), ordered by row (sort_by_row). */
static PyObject *select_ivf(PyObject *self, PyObject *args) {
    Py_ssize_t voff_a, order_a, docs_a, n_vec, kept_a, nk, ncent, rowmap_a, n_docs, m, pos_a, rows_a, cap;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnnn", &voff_a, &order_a, &docs_a, &n_vec, &kept_a, &nk, &ncent, &rowmap_a,
                          &n_docs, &m, &pos_a, &rows_a, &cap))
        return NULL;
    const int64_t *voff = (const int64_t *)voff_a, *kept = (const int64_t *)kept_a;
    const int64_t *rowmap = (const int64_t *)rowmap_a;
    const int32_t *order = (const int32_t *)order_a, *docs = (const int32_t *)docs_a;
    int64_t *pos = (int64_t *)pos_a, *rows = (int64_t *)rows_a;
    int64_t n = 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < nk; i++) {
        const int64_t c = kept[i];
        if (c < 0 || c >= ncent || voff[c] < 0 || voff[c] > voff[c + 1] || voff[c + 1] > n_vec) {
            bad = 1;
            break;
        }
        if (cap < 0) { /* count mode: the room the output needs */
            n += voff[c + 1] - voff[c];
            continue;
        }
        if (n + (voff[c + 1] - voff[c]) > cap) {
            bad = 2;
            break;
        }
        for (int64_t t = voff[c]; t < voff[c + 1]; t++) {
            const int32_t d = docs[t], p = order[t];
            if (d < 0 || d >= n_docs || p < 0 || p >= n_vec || rowmap[d] >= m) {
                bad = 1;
                break;
            }
            pos[n] = p; /* written always, kept when the document is selected (no branch to mispredict) */
            rows[n] = rowmap[d];
            n += rowmap[d] >= 0;
        }
        if (bad) break;
    }
    if (!bad && cap >= 0) sort_by_row(pos, rows, n, m);
    Py_END_ALLOW_THREADS return selected(bad, n, "select_ivf", "a centroid, document, row or vector id");
}

/* centroid_max: PLAID's centroid interaction with pruning: for the documents d in the inverted lists
 * (voff [C+1] int64 into docs int32) of centroids kept[0..nk) that have rowmap[d] >= 0 (below m),
 * out[rowmap[d], t] = max(out[rowmap[d], t], S[c, t]) for t < lq; S float32 [C, ldS], out [m, lq]. */
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2")))
#endif
static int centroid_max_run(const int64_t *voff, int64_t n_vec, const int32_t *docs, const int64_t *kept, int64_t nk,
                            int64_t ncent, const int64_t *rowmap, int64_t n_docs, int64_t m, const float *S,
                            int64_t lq, int64_t ldS, float *out) {
    for (int64_t i = 0; i < nk; i++) {
        const int64_t c = kept[i];
        if (c < 0 || c >= ncent || voff[c] < 0 || voff[c] > voff[c + 1] || voff[c + 1] > n_vec) return 1;
        const float *sc = S + c * ldS;
        for (int64_t t = voff[c]; t < voff[c + 1]; t++) {
            const int32_t d = docs[t];
            if (d < 0 || d >= n_docs || rowmap[d] >= m) return 1;
            if (rowmap[d] < 0) continue;
            float *o = out + rowmap[d] * lq;
            for (int64_t u = 0; u < lq; u++) o[u] = sc[u] > o[u] ? sc[u] : o[u];
        }
    }
    return 0;
}

static PyObject *centroid_max(PyObject *self, PyObject *args) {
    Py_ssize_t voff, n_vec, docs, kept, nk, ncent, rowmap, n_docs, m, S, lq, ldS, out;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnnn", &voff, &n_vec, &docs, &kept, &nk, &ncent, &rowmap, &n_docs, &m, &S,
                          &lq, &ldS, &out))
        return NULL;
    if (KERNEL == NULL) Py_RETURN_FALSE;
    if (lq <= 0 || ldS < lq) {
        PyErr_SetString(PyExc_ValueError, "centroid_max: need 0 < lq <= ldS");
        return NULL;
    }
    int bad;
    Py_BEGIN_ALLOW_THREADS bad = centroid_max_run((const int64_t *)voff, n_vec, (const int32_t *)docs,
                                                  (const int64_t *)kept, nk, ncent, (const int64_t *)rowmap, n_docs,
                                                  m, (const float *)S, lq, ldS, (float *)out);
    Py_END_ALLOW_THREADS if (bad) {
        PyErr_SetString(PyExc_IndexError, "centroid_max: a centroid, document or row id is out of range");
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* select_candidates: the documents in the inverted lists (ivf_off [C+1] int64 into ivf_docs [nnz]
 * int32) of centroids cells[0..ncells) (int64, repeats allowed), restricted to allowed (uint8 [n_docs];
 * NULL: all). Writes them in increasing order to cand (int64, room for n_docs) and their rank to rowmap
 * (int64 [n_docs], -1 for the others); returns their count. */
static PyObject *select_candidates(PyObject *self, PyObject *args) {
    Py_ssize_t off_a, ncent, docs_a, nnz, cells_a, ncells, allowed_a, n_docs, cand_a, rowmap_a;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnn", &off_a, &ncent, &docs_a, &nnz, &cells_a, &ncells, &allowed_a, &n_docs,
                          &cand_a, &rowmap_a))
        return NULL;
    const int64_t *off = (const int64_t *)off_a, *cells = (const int64_t *)cells_a;
    const int32_t *docs = (const int32_t *)docs_a;
    const uint8_t *allowed = (const uint8_t *)allowed_a;
    int64_t *cand = (int64_t *)cand_a, *rowmap = (int64_t *)rowmap_a;
    int64_t n = 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t d = 0; d < n_docs; d++) rowmap[d] = -1;
    for (Py_ssize_t i = 0; i < ncells && !bad; i++) {
        const int64_t c = cells[i];
        if (c < 0 || c >= ncent || off[c] < 0 || off[c] > off[c + 1] || off[c + 1] > nnz) {
            bad = 1;
            break;
        }
        for (int64_t t = off[c]; t < off[c + 1]; t++) {
            const int32_t d = docs[t];
            if (d < 0 || d >= n_docs) {
                bad = 1;
                break;
            }
            rowmap[d] = 0; /* marked */
        }
    }
    if (!bad)
        for (Py_ssize_t d = 0; d < n_docs; d++) {
            if (rowmap[d] < 0) continue;
            if (allowed != NULL && !allowed[d]) {
                rowmap[d] = -1;
                continue;
            }
            rowmap[d] = n;
            cand[n++] = d;
        }
    Py_END_ALLOW_THREADS return selected(bad, n, "select_candidates", "a centroid or document id");
}

/* select_tokens: the vectors of local documents locs[0..nloc) (int64; CSR offsets [n_docs + 1] int64),
 * output row rows[i] (int64, below m; NULL: i), keeping only those whose centroid c = codes[p] (int32
 * [n_vec]) has cmask[c] set (uint8 [C]; NULL: all). */
static PyObject *select_tokens(PyObject *self, PyObject *args) {
    Py_ssize_t off_a, n_docs, locs_a, nloc, rows_in_a, m, codes_a, n_vec, cmask_a, ncent, pos_a, rows_a, cap;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnnn", &off_a, &n_docs, &locs_a, &nloc, &rows_in_a, &m, &codes_a, &n_vec,
                          &cmask_a, &ncent, &pos_a, &rows_a, &cap))
        return NULL;
    const int64_t *off = (const int64_t *)off_a, *locs = (const int64_t *)locs_a;
    const int64_t *rows_in = (const int64_t *)rows_in_a;
    const int32_t *codes = (const int32_t *)codes_a;
    const uint8_t *cmask = (const uint8_t *)cmask_a;
    int64_t *pos = (int64_t *)pos_a, *rows = (int64_t *)rows_a;
    int64_t n = 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < nloc; i++) {
        const int64_t d = locs[i], r = rows_in != NULL ? rows_in[i] : i;
        if (d < 0 || d >= n_docs || r < 0 || r >= m || off[d] < 0 || off[d] > off[d + 1] || off[d + 1] > n_vec) {
            bad = 1;
            break;
        }
        if (cap < 0) { /* count mode: the room the output needs */
            n += off[d + 1] - off[d];
            continue;
        }
        if (n + (off[d + 1] - off[d]) > cap) {
            bad = 2;
            break;
        }
        for (int64_t p = off[d]; p < off[d + 1]; p++) {
            int keep = 1;
            if (cmask != NULL) {
                const int32_t c = codes[p];
                if (c < 0 || c >= ncent) {
                    bad = 1;
                    break;
                }
                keep = cmask[c] != 0;
            }
            pos[n] = p; /* written always, kept when selected (no branch to mispredict) */
            rows[n] = r;
            n += keep;
        }
        if (bad) break;
    }
    Py_END_ALLOW_THREADS return selected(bad, n, "select_tokens", "a document, row, vector or centroid id");
}

static PyObject *select_kernel(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    kernel_t best = pick_kernel();
#if defined(__x86_64__) || defined(__i386__)
    kernel_t want = strcmp(name, "avx512") == 0 ? kernel_avx512 : strcmp(name, "avx2") == 0 ? kernel_avx2 : NULL;
    /* the AVX-512 machine also runs AVX2 code; the reverse is not possible */
    if (want == NULL || (want == kernel_avx512 && best != kernel_avx512) || best == NULL) Py_RETURN_FALSE;
    KERNEL = want;
    KERNEL_BF16 = pick_bf16(KERNEL);
    Py_RETURN_TRUE;
#else
    (void)name;
    (void)best;
    Py_RETURN_FALSE;
#endif
}

/* bf16(): whether bf16 jobs run the AVX512-BF16 kernel (else a float32 kernel on rounded operands: the
 * same products, slower); bf16(False) turns it off, bf16(True) back on where the CPU has AVX512-BF16. */
static PyObject *bf16_kernel(PyObject *self, PyObject *args) {
    int on = -1;
    (void)self;
    if (!PyArg_ParseTuple(args, "|p", &on)) return NULL;
    if (on >= 0) KERNEL_BF16 = on ? pick_bf16(KERNEL) : NULL;
    return PyBool_FromLong(KERNEL_BF16 != NULL);
}

static PyObject *kernel(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(kernel_name(KERNEL));
}

/* top_rows: the n rows of best (float32 [m, ld], first lq columns) with the largest approximate score
 * sum_t max(best[i, t], 0) * w[t] (w float32 [lq]; NULL: 1), in increasing order into out (int64 [n]);
 * ties go to the lower row. PLAID's pruning between stages: a quickselect, no full sort. */
static float kth_smallest(float *a, int64_t len, int64_t k) { /* reorders a */
    int64_t lo = 0, hi = len - 1;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        float x = a[lo], y = a[mid], z = a[hi]; /* median of three as pivot */
        const float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                const float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return a[k];
    }
    return a[k];
}

static PyObject *top_rows(PyObject *self, PyObject *args) {
    Py_ssize_t best_a, m, lq, ld, w_a, n, out_a;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnn", &best_a, &m, &lq, &ld, &w_a, &n, &out_a)) return NULL;
    if (m < 0 || lq < 0 || ld < lq || n < 0) {
        PyErr_SetString(PyExc_ValueError, "top_rows: need m, n >= 0 and 0 <= lq <= ld");
        return NULL;
    }
    const float *best = (const float *)best_a, *w = (const float *)w_a;
    int64_t *out = (int64_t *)out_a;
    if (n >= m) {
        for (Py_ssize_t i = 0; i < m; i++) out[i] = i;
        return PyLong_FromSsize_t(m);
    }
    if (n == 0) return PyLong_FromLong(0);
    float *score = malloc(2 * (size_t)m * sizeof(float));
    if (score == NULL) return PyErr_NoMemory();
    float *scratch = score + m;
    int64_t got = 0;
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < m; i++) {
        const float *b = best + i * ld;
        float sum = 0.0f;
        if (w != NULL)
            for (Py_ssize_t t = 0; t < lq; t++) sum += (b[t] > 0.0f ? b[t] : 0.0f) * w[t];
        else
            for (Py_ssize_t t = 0; t < lq; t++) sum += b[t] > 0.0f ? b[t] : 0.0f;
        score[i] = scratch[i] = sum;
    }
    const float cut = kth_smallest(scratch, m, m - n); /* the n-th largest */
    int64_t above = 0;
    for (Py_ssize_t i = 0; i < m; i++) above += score[i] > cut;
    int64_t ties = n - above; /* rows scoring exactly `cut` that are kept, the first ones */
    for (Py_ssize_t i = 0; i < m && got < n; i++) {
        const int keep = score[i] > cut || (score[i] == cut && ties > 0);
        ties -= score[i] == cut && keep;
        out[got] = i;
        got += keep;
    }
    Py_END_ALLOW_THREADS free(score);
    return PyLong_FromLongLong(got);
}

static PyObject *worker_jobs(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLongLong(atomic_load(&W.joined));
}

static PyMethodDef METHODS[] = {
    {"gather_max", gather_max, METH_VARARGS, "best[rows[i]] = max(best[rows[i]], fp16 vec[pos[i]] @ query.T)"},
    {"scores", scores, METH_VARARGS,
     "out[i] = max(out[i], float32 table[i] @ query.T) for i < n; optionally row maxima and column argmaxima"},
    {"gather_max_codes", gather_max_codes, METH_VARARGS,
     "best[rows[i]] = max(best[rows[i]], decompressed vector pos[i] @ query.T)"},
    {"centroid_max", centroid_max, METH_VARARGS, "per candidate and query token, the best kept centroid's score"},
    {"select_candidates", select_candidates, METH_VARARGS, "documents in the inverted lists of some centroids"},
    {"select_ivf", select_ivf, METH_VARARGS, "positions and rows of kept centroids' vectors in selected documents"},
    {"select_tokens", select_tokens, METH_VARARGS, "positions and rows of documents' vectors in selected centroids"},
    {"top_rows", top_rows, METH_VARARGS, "the rows with the largest clamped (weighted) sums, in order"},
    {"worker_jobs", worker_jobs, METH_NOARGS, "how many split calls the second thread has taken part in"},
    {"bf16", bf16_kernel, METH_VARARGS, "whether bf16 jobs run the AVX512-BF16 kernel; bf16(False/True) sets it"},
    {"kernel", kernel, METH_NOARGS, "the kernel chosen for this CPU: avx512, avx2 or none"},
    {"select", select_kernel, METH_VARARGS, "use kernel avx512 or avx2 if this CPU runs it; returns whether it does"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_fused", "Fused CPU scoring kernels.", -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) {
    KERNEL = pick_kernel();
    KERNEL_BF16 = pick_bf16(KERNEL);
    return PyModule_Create(&MODULE);
}
