/* Per-channel moments of a float32 tensor in CPU memory, in one pass: a pure function of memory.
 *
 * moments(ptr, G, C, P, sg, sc, sp, out, mid, thr) -> None
 *   Reads x[g, c, p] = ((const float *) ptr)[g*sg + c*sc + p*sp] (strides in elements) for g < G, c < C,
 *   p < P and writes 2*C + 2 doubles at out:
 *     out[c]       = sum_{g,p} x[g,c,p]
 *     out[C + c]   = sum_{g,p} x[g,c,p]^2
 *     out[2C]      = number of non-zero elements
 *     out[2C + 1]  = number of elements with |x - mid| >= thr (0 when thr < 0)
 *   Every argument is a number (addresses as integers); nothing else is read. The caller
 *   (initdiag.recording.moments.reduce) guarantees that the memory is alive and on the CPU for the call
 *   and that out does not overlap it. Its torch twin, moments_torch() there, is the reference the tests
 *   compare this kernel with.
 *
 *   Sums are accumulated in float over blocks of at most 64 rows (channels innermost) or 1024 values
 *   (channels outermost) and in double across blocks (relative error ~1e-7).
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

/* moments() once its arguments are checked; runs without the GIL. */
static void run_moments(const float *x, Py_ssize_t G, Py_ssize_t C, Py_ssize_t P, Py_ssize_t sg, Py_ssize_t sc,
                        Py_ssize_t sp, double *out, double mid, double thr) {
    int64_t nonzero = 0, sat = 0;
    double *s1 = out, *s2 = out + C;
    for (Py_ssize_t c = 0; c < 2 * C; c++) out[c] = 0.0;
    if (sc == 1 && C > 1) {
        channels_inner(x, G, C, P, sg, sp, s1, s2, &nonzero, &sat, (float) mid, (float) thr);
    } else {
        channels_outer(x, G, C, P, sg, sc, sp, s1, s2, &nonzero, &sat, (float) mid, (float) thr);
    }
    out[2 * C] = (double) nonzero;
    out[2 * C + 1] = (double) sat;
}

static PyObject *moments(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "moments(ptr, G, C, P, sg, sc, sp, out, mid, thr) takes 10 arguments");
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
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t G = dims[0], C = dims[1], P = dims[2], sg = dims[3], sc = dims[4], sp = dims[5];
    if (G < 0 || C < 1 || P < 0 || (x == NULL && G * P > 0) || out == NULL) {
        PyErr_SetString(PyExc_ValueError, "moments: bad shape or null pointer");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    run_moments(x, G, C, P, sg, sc, sp, out, mid, thr);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", (PyCFunction) (void (*)(void)) moments, METH_FASTCALL,
     "moments(ptr, G, C, P, sg, sc, sp, out, mid, thr): per-channel sums, sums of squares, non-zero and "
     "saturated counts of a float32 tensor in CPU memory, written as 2*C + 2 doubles at out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
