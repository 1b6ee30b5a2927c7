/* Fused gather + reconstruct + dot products + max: the inner loop of PLAID's scoring stages on CPU.
 *
 * For i < n, t < lqp:  best[rows[i], t] = max(best[rows[i], t], sum_d v_i[d] * qT[d, t])
 * where v_i is row pos[i] of
 *   gather_max:       fp16 originals vec [T, dim] (raw uint16), or
 *   gather_max_codes: a compressed vector: centroids[codes[pos[i]]] + the residual that the bytes
 *                     packed[pos[i], :] select in the lookup table lut [B * 256, per] (byte j with value
 *                     b adds lut[j * 256 + b] to dims j * per .. j * per + per - 1), divided by its norm
 *                     when `normalize` is set (ResidualCodec.decompress, fused).
 * pos and rows are int64 [n], qT float32 [dim, lqp], best float32 [m, lqp]. Arguments are raw
 * addresses: the Python wrappers (tessera.index.kernels, ResidualCodec.score_max) check dtypes, shapes
 * and bounds. lqp and dim must be multiples of 16, dim at most MAX_DIM.
 *
 * Without the intermediate [n, dim] fp32 copy and [n, lqp] similarity matrix that numpy/torch would
 * materialise, rows are rebuilt in a small buffer, prefetched ahead of use, and the query stays in L1.
 * Kernels for AVX-512F and for AVX2+FMA+F16C are chosen at run time; on other CPUs the functions
 * return False and the caller uses its torch path. One thread per call; the GIL is released while it
 * runs, so concurrent searches (the service's workers) run their kernels in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DIM 1024
#define PREFETCH_AHEAD 8 /* vectors */

typedef struct {
    /* fp16 originals */
    const uint16_t *vec;
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
    int64_t n;
    const float *qT;
    int64_t lqp;
    float *best;
} job_t;

typedef void (*kernel_t)(const job_t *);

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

static inline void prefetch(const job_t *j, int64_t from, int64_t to) {
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

/* Loads rows i .. i + ROWS - 1 (fewer at the end: the missing ones repeat row i and are not stored)
 * into buf as float32, prefetching those PREFETCH_AHEAD further on; returns how many are real. */
#define ROWS 4
__attribute__((target("avx2,fma,f16c"))) static inline int load_rows(const job_t *j, int64_t i,
                                                                     float buf[ROWS][MAX_DIM], float scale[ROWS]) {
    const int cnt = (j->n - i < ROWS) ? (int)(j->n - i) : ROWS;
    prefetch(j, i + PREFETCH_AHEAD, i + PREFETCH_AHEAD + ROWS);
    for (int v = 0; v < ROWS; v++) {
        const int64_t p = j->pos[i + (v < cnt ? v : 0)];
        if (j->vec != NULL) {
            const uint16_t *r = j->vec + p * j->dim;
            for (int64_t d = 0; d < j->dim; d += 8)
                _mm256_store_ps(buf[v] + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + d))));
            scale[v] = 1.0f;
        } else {
            scale[v] = rebuild(j, p, buf[v]);
        }
    }
    return cnt;
}

/* AVX-512: 4 vectors x 32 query tokens per pass (8 accumulators of 16 floats). */
__attribute__((target("avx512f"))) static void kernel_avx512(const job_t *j) {
    float buf[ROWS][MAX_DIM] __attribute__((aligned(64)));
    float scale[ROWS];
    const int64_t dim = j->dim, lqp = j->lqp, nblk = lqp / 16;
    for (int64_t i = 0; i < j->n; i += ROWS) {
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
            const __m512 acc[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
            for (int v = 0; v < cnt; v++) {
                const __m512 s = _mm512_set1_ps(scale[v]);
                float *o = j->best + j->rows[i + v] * lqp + tb * 16;
                _mm512_storeu_ps(o, _mm512_max_ps(_mm512_loadu_ps(o), _mm512_mul_ps(acc[v][0], s)));
                _mm512_storeu_ps(o + 16, _mm512_max_ps(_mm512_loadu_ps(o + 16), _mm512_mul_ps(acc[v][1], s)));
            }
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
            for (int v = 0; v < cnt; v++) {
                float *o = j->best + j->rows[i + v] * lqp + tb * 16;
                _mm512_storeu_ps(o, _mm512_max_ps(_mm512_loadu_ps(o), _mm512_mul_ps(acc[v], _mm512_set1_ps(scale[v]))));
            }
        }
    }
}

/* AVX2: 4 vectors x 16 query tokens per pass (8 accumulators of 8 floats); 4 rows in flight, as for
 * AVX-512, which matters more than register width for rows gathered from random places. */
__attribute__((target("avx2,fma,f16c"))) static void kernel_avx2(const job_t *j) {
    float buf[ROWS][MAX_DIM] __attribute__((aligned(64)));
    float scale[ROWS];
    const int64_t dim = j->dim, lqp = j->lqp;
    for (int64_t i = 0; i < j->n; i += ROWS) {
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
                float *o = j->best + j->rows[i + v] * lqp + tb;
                _mm256_storeu_ps(o, _mm256_max_ps(_mm256_loadu_ps(o), _mm256_mul_ps(acc[v][0], s)));
                _mm256_storeu_ps(o + 8, _mm256_max_ps(_mm256_loadu_ps(o + 8), _mm256_mul_ps(acc[v][1], s)));
            }
        }
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
#else
static kernel_t pick_kernel(void) { return NULL; }
static const char *kernel_name(kernel_t k) { (void)k; return "none"; }
#endif

static kernel_t KERNEL = NULL;

/* Fills the operands both entry points share, checks them and runs the kernel without the GIL. */
static PyObject *run_job(job_t *job, Py_ssize_t dim, Py_ssize_t pos, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t qT,
                         Py_ssize_t lqp, Py_ssize_t best) {
    if (dim <= 0 || dim > MAX_DIM || dim % 16 || lqp <= 0 || lqp % 16 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "dim and lqp must be positive multiples of 16, dim <= 1024");
        return NULL;
    }
    job->dim = dim;
    job->pos = (const int64_t *)pos;
    job->rows = (const int64_t *)rows;
    job->n = n;
    job->qT = (const float *)qT;
    job->lqp = lqp;
    job->best = (float *)best;
    Py_BEGIN_ALLOW_THREADS KERNEL(job);
    Py_END_ALLOW_THREADS Py_RETURN_TRUE;
}

static PyObject *gather_max(PyObject *self, PyObject *args) {
    Py_ssize_t vec, dim, pos, rows, n, qT, lqp, best;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnnn", &vec, &dim, &pos, &rows, &n, &qT, &lqp, &best)) return NULL;
    if (KERNEL == NULL) Py_RETURN_FALSE;
    job_t job = {0};
    job.vec = (const uint16_t *)vec;
    return run_job(&job, dim, pos, rows, n, qT, lqp, best);
}

static PyObject *gather_max_codes(PyObject *self, PyObject *args) {
    Py_ssize_t centroids, codes, packed, nbytes, lut, per, dim, pos, rows, n, qT, lqp, best;
    int normalize;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnnnnnpnnnnnnn", &centroids, &codes, &packed, &nbytes, &lut, &per, &normalize, &dim,
                          &pos, &rows, &n, &qT, &lqp, &best))
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
    return run_job(&job, dim, pos, rows, n, qT, lqp, best);
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
    Py_RETURN_TRUE;
#else
    (void)name;
    (void)best;
    Py_RETURN_FALSE;
#endif
}

static PyObject *kernel(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(kernel_name(KERNEL));
}

static PyMethodDef METHODS[] = {
    {"gather_max", gather_max, METH_VARARGS, "best[rows[i]] = max(best[rows[i]], fp16 vec[pos[i]] @ qT)"},
    {"gather_max_codes", gather_max_codes, METH_VARARGS,
     "best[rows[i]] = max(best[rows[i]], decompressed vector pos[i] @ qT)"},
    {"kernel", kernel, METH_NOARGS, "the kernel chosen for this CPU: avx512, avx2 or none"},
    {"select", select_kernel, METH_VARARGS, "use kernel avx512 or avx2 if this CPU runs it; returns whether it does"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_fused", "Fused CPU scoring kernels.", -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) {
    KERNEL = pick_kernel();
    return PyModule_Create(&MODULE);
}
