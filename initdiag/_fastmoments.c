/* Per-channel moments of a float32 CPU tensor in one pass over its memory (optional; initdiag falls
 * back to torch operations when this module is missing).
 *
 * moments(ptr, G, C, P, sg, sc, sp, out, mid, thr[, relu_out]) -> None
 *   The tensor is x[g, c, p] = ((float *) ptr)[g*sg + c*sc + p*sp] (strides in elements), g < G,
 *   c < C, p < P. Writes, as doubles at out (2*C + 2 of them):
 *     out[c]       = sum_{g,p} x[g,c,p]
 *     out[C + c]   = sum_{g,p} x[g,c,p]^2
 *     out[2C]      = number of non-zero elements
 *     out[2C + 1]  = number of elements with |x - mid| >= thr (0 when thr < 0)
 *   With relu_out (an address, 0 for none), the same 2*C + 2 doubles for max(x, 0) are written there
 *   in the same pass (the saturated count is 0): the output of a ReLU applied to x, read for free.
 *
 * flat(out, ptr_0, n_0, ptr_1, n_1, ...) -> None
 *   Each (ptr_j, n_j) is n_j contiguous floats, read as one channel. Writes 4 doubles per tensor at
 *   out + 4j: sum, sum of squares, number of non-zero elements, 0 (one call for all of a model's
 *   weights or gradients).
 *
 *   Sums are accumulated in float over blocks of at most 1024 values per channel and in double across
 *   blocks (relative error ~1e-7). The caller guarantees the memory is valid for the
 *   call (the tensor is alive and on the CPU) and that out does not overlap it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define BLOCK 64
#define MAXC 4096

/* Channels innermost: each row of C values is added to per-channel float accumulators (vectorized
 * across channels), which are added to the double sums every BLOCK rows to bound rounding. */
__attribute__((target_clones("avx2", "default")))
static void channels_inner(const float *restrict x, Py_ssize_t G, Py_ssize_t C, Py_ssize_t P,
                           Py_ssize_t sg, Py_ssize_t sp, double *restrict s1, double *restrict s2,
                           int64_t *nonzero, int64_t *sat, float mid, float thr) {
    float a[MAXC], b[MAXC];
    int32_t z[MAXC];
    int64_t st = 0, nz = 0;
    for (Py_ssize_t c0 = 0; c0 < C; c0 += MAXC) {
        Py_ssize_t cn = C - c0 < MAXC ? C - c0 : MAXC;
        Py_ssize_t rows = 0;
        for (Py_ssize_t c = 0; c < cn; c++) { a[c] = 0.0f; b[c] = 0.0f; z[c] = 0; }
        for (Py_ssize_t g = 0; g < G; g++) {
            for (Py_ssize_t p = 0; p < P; p++) {
                const float *restrict row = x + g * sg + p * sp + c0;
                for (Py_ssize_t c = 0; c < cn; c++) {
                    float v = row[c];
                    a[c] += v;
                    b[c] += v * v;
                    z[c] += v != 0.0f;
                }
                if (thr >= 0.0f) {
                    for (Py_ssize_t c = 0; c < cn; c++) st += fabsf(row[c] - mid) >= thr;
                }
                if (++rows == BLOCK) {
                    for (Py_ssize_t c = 0; c < cn; c++) {
                        s1[c0 + c] += a[c]; s2[c0 + c] += b[c]; nz += z[c];
                        a[c] = 0.0f; b[c] = 0.0f; z[c] = 0;
                    }
                    rows = 0;
                }
            }
        }
        for (Py_ssize_t c = 0; c < cn; c++) { s1[c0 + c] += a[c]; s2[c0 + c] += b[c]; nz += z[c]; }
    }
    *nonzero += nz;
    *sat += st;
}

/* channels_inner for x and max(x, 0) at once (r1, r2, rnonzero: the moments of max(x, 0)). */
__attribute__((target_clones("avx2", "default")))
static void channels_inner_relu(const float *restrict x, Py_ssize_t G, Py_ssize_t C, Py_ssize_t P,
                                Py_ssize_t sg, Py_ssize_t sp, double *restrict s1, double *restrict s2,
                                int64_t *nonzero, double *restrict r1, double *restrict r2,
                                int64_t *rnonzero) {
    float a[MAXC], b[MAXC], ra[MAXC], rb[MAXC];
    int32_t z[MAXC], rz[MAXC];
    int64_t nz = 0, rnz = 0;
    for (Py_ssize_t c0 = 0; c0 < C; c0 += MAXC) {
        Py_ssize_t cn = C - c0 < MAXC ? C - c0 : MAXC;
        Py_ssize_t rows = 0;
        for (Py_ssize_t c = 0; c < cn; c++) { a[c] = b[c] = ra[c] = rb[c] = 0.0f; z[c] = rz[c] = 0; }
        for (Py_ssize_t g = 0; g < G; g++) {
            for (Py_ssize_t p = 0; p < P; p++) {
                const float *restrict row = x + g * sg + p * sp + c0;
                for (Py_ssize_t c = 0; c < cn; c++) {
                    float v = row[c];
                    float r = v <= 0.0f ? 0.0f : v; /* NaN stays NaN, as in torch.relu */
                    a[c] += v;
                    b[c] += v * v;
                    z[c] += v != 0.0f;
                    ra[c] += r;
                    rb[c] += r * r;
                    rz[c] += r != 0.0f;
                }
                if (++rows == BLOCK) {
                    for (Py_ssize_t c = 0; c < cn; c++) {
                        s1[c0 + c] += a[c]; s2[c0 + c] += b[c]; nz += z[c];
                        r1[c0 + c] += ra[c]; r2[c0 + c] += rb[c]; rnz += rz[c];
                        a[c] = b[c] = ra[c] = rb[c] = 0.0f; z[c] = rz[c] = 0;
                    }
                    rows = 0;
                }
            }
        }
        for (Py_ssize_t c = 0; c < cn; c++) {
            s1[c0 + c] += a[c]; s2[c0 + c] += b[c]; nz += z[c];
            r1[c0 + c] += ra[c]; r2[c0 + c] += rb[c]; rnz += rz[c];
        }
    }
    *nonzero += nz;
    *rnonzero += rnz;
}

/* Moments of max(x, 0) for any layout, in double (a second pass over memory just read). */
static void relu_any(const float *restrict x, Py_ssize_t G, Py_ssize_t C, Py_ssize_t P, Py_ssize_t sg,
                     Py_ssize_t sc, Py_ssize_t sp, double *restrict r1, double *restrict r2, int64_t *rnonzero) {
    int64_t rnz = 0;
    for (Py_ssize_t g = 0; g < G; g++) {
        for (Py_ssize_t c = 0; c < C; c++) {
            const float *restrict col = x + g * sg + c * sc;
            double a = 0.0, b = 0.0;
            for (Py_ssize_t p = 0; p < P; p++) {
                float v = col[p * sp];
                double r = v <= 0.0f ? 0.0 : (double) v;
                a += r;
                b += r * r;
                rnz += r != 0.0;
            }
            r1[c] += a;
            r2[c] += b;
        }
    }
    *rnonzero += rnz;
}

/* Channels outermost: each channel's P values (strided by sp) are summed; contiguous runs are summed in
 * float lanes in blocks of BLOCK_P values, each block then added to the double sums. */
#define BLOCK_P 1024

__attribute__((target_clones("avx2", "default"), noinline))
static void sum_block(const float *restrict blk, Py_ssize_t n, float *sum, float *sumsq, int32_t *nonzero) {
    float fa = 0.0f, fb = 0.0f;
    int32_t z = 0;
#pragma omp simd reduction(+ : fa, fb, z)
    for (Py_ssize_t p = 0; p < n; p++) {
        float v = blk[p];
        fa += v;
        fb += v * v;
        z += v != 0.0f;
    }
    *sum = fa;
    *sumsq = fb;
    *nonzero = z;
}

static void channels_outer(const float *restrict x, Py_ssize_t G, Py_ssize_t C, Py_ssize_t P,
                           Py_ssize_t sg, Py_ssize_t sc, Py_ssize_t sp, double *restrict s1,
                           double *restrict s2, int64_t *nonzero, int64_t *sat, float mid, float thr) {
    int64_t nz = 0, st = 0;
    for (Py_ssize_t g = 0; g < G; g++) {
        for (Py_ssize_t c = 0; c < C; c++) {
            const float *restrict col = x + g * sg + c * sc;
            double a = 0.0, b = 0.0;
            if (sp == 1) {
                for (Py_ssize_t p0 = 0; p0 < P; p0 += BLOCK_P) {
                    Py_ssize_t pn = P - p0 < BLOCK_P ? P - p0 : BLOCK_P;
                    float fa, fb;
                    int32_t z;
                    sum_block(col + p0, pn, &fa, &fb, &z);
                    a += fa;
                    b += fb;
                    nz += z;
                }
            } else {
                for (Py_ssize_t p = 0; p < P; p++) {
                    double v = (double) col[p * sp];
                    a += v;
                    b += v * v;
                    nz += col[p * sp] != 0.0f;
                }
            }
            if (thr >= 0.0f) {
                for (Py_ssize_t p = 0; p < P; p++) st += fabsf(col[p * sp] - mid) >= thr;
            }
            s1[c] += a;
            s2[c] += b;
        }
    }
    *nonzero += nz;
    *sat += st;
}

static PyObject *moments(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs != 10 && nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "moments(ptr, G, C, P, sg, sc, sp, out, mid, thr[, relu_out]) takes 10 or 11 "
                                         "arguments");
        return NULL;
    }
    const float *x = (const float *) PyLong_AsVoidPtr(args[0]);
    Py_ssize_t dims[6];
    for (int i = 0; i < 6; i++) {
        dims[i] = PyLong_AsSsize_t(args[i + 1]);
    }
    double *out = (double *) PyLong_AsVoidPtr(args[7]);
    double mid = PyFloat_AsDouble(args[8]);
    double thr = PyFloat_AsDouble(args[9]);
    double *relu = nargs == 11 ? (double *) PyLong_AsVoidPtr(args[10]) : NULL;
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t G = dims[0], C = dims[1], P = dims[2], sg = dims[3], sc = dims[4], sp = dims[5];
    if (G < 0 || C < 1 || P < 0 || x == NULL || out == NULL) {
        PyErr_SetString(PyExc_ValueError, "moments: bad shape or null pointer");
        return NULL;
    }
    int64_t nonzero = 0, sat = 0, rnonzero = 0;
    double *s1 = out, *s2 = out + C;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t c = 0; c < 2 * C; c++) out[c] = 0.0;
    if (relu != NULL) {
        for (Py_ssize_t c = 0; c < 2 * C; c++) relu[c] = 0.0;
    }
    if (relu != NULL && sc == 1 && C > 1 && thr < 0.0) {
        channels_inner_relu(x, G, C, P, sg, sp, s1, s2, &nonzero, relu, relu + C, &rnonzero);
    } else {
        if (sc == 1 && C > 1) {
            channels_inner(x, G, C, P, sg, sp, s1, s2, &nonzero, &sat, (float) mid, (float) thr);
        } else {
            channels_outer(x, G, C, P, sg, sc, sp, s1, s2, &nonzero, &sat, (float) mid, (float) thr);
        }
        if (relu != NULL) {
            relu_any(x, G, C, P, sg, sc, sp, relu, relu + C, &rnonzero);
        }
    }
    out[2 * C] = (double) nonzero;
    out[2 * C + 1] = (double) sat;
    if (relu != NULL) {
        relu[2 * C] = (double) rnonzero;
        relu[2 * C + 1] = 0.0;
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *flat(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs < 1 || nargs % 2 != 1) {
        PyErr_SetString(PyExc_TypeError, "flat(out, ptr_0, n_0, ptr_1, n_1, ...) takes an odd number of arguments");
        return NULL;
    }
    double *out = (double *) PyLong_AsVoidPtr(args[0]);
    Py_ssize_t k = (nargs - 1) / 2;
    const float **ptrs = PyMem_Malloc((size_t) (k > 0 ? k : 1) * (sizeof(float *) + sizeof(Py_ssize_t)));
    if (ptrs == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t *sizes = (Py_ssize_t *) (ptrs + (k > 0 ? k : 1));
    for (Py_ssize_t j = 0; j < k; j++) {
        ptrs[j] = (const float *) PyLong_AsVoidPtr(args[1 + 2 * j]);
        sizes[j] = PyLong_AsSsize_t(args[2 + 2 * j]);
        if (!PyErr_Occurred() && (out == NULL || (ptrs[j] == NULL && sizes[j] > 0) || sizes[j] < 0)) {
            PyErr_SetString(PyExc_ValueError, "flat: bad size or null pointer");
        }
        if (PyErr_Occurred()) {
            PyMem_Free(ptrs);
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < k; j++) {
        const float *x = ptrs[j];
        Py_ssize_t n = sizes[j];
        double a = 0.0, b = 0.0;
        int64_t nz = 0;
        for (Py_ssize_t p0 = 0; p0 < n; p0 += BLOCK_P) {
            float fa, fb;
            int32_t z;
            sum_block(x + p0, n - p0 < BLOCK_P ? n - p0 : BLOCK_P, &fa, &fb, &z);
            a += fa;
            b += fb;
            nz += z;
        }
        out[4 * j] = a;
        out[4 * j + 1] = b;
        out[4 * j + 2] = (double) nz;
        out[4 * j + 3] = 0.0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(ptrs);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", (PyCFunction) (void (*)(void)) moments, METH_FASTCALL,
     "moments(ptr, G, C, P, sg, sc, sp, out, mid, thr[, relu_out]): per-channel sums, sums of squares, "
     "non-zero and saturated counts of a float32 tensor, written as doubles at out (and those of max(x, 0) "
     "at relu_out)."},
    {"flat", (PyCFunction) (void (*)(void)) flat, METH_FASTCALL,
     "flat(out, ptr_0, n_0, ...): sum, sum of squares, non-zero count and 0 of each contiguous float32 "
     "block, written as 4 doubles per block at out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastmoments", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastmoments(void) { return PyModule_Create(&module); }
