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
 * bind(float32, channels_last) -> None
 *   The torch objects the functions below compare with (called once by initdiag._moments).
 *
 * tap(y, site, step, epoch[, relu_site]) -> bool
 *   The recorder's hot path (initdiag.recorder): when the tensor y has the layout cached in site,
 *   a tuple (shape, strides, stream, G, C, P, sg, sc, sp, count, offset_bytes, mid, thr), is float32 on
 *   the CPU and the stream (an initdiag._moments.Stream) has room, moments() of it into the stream's
 *   next row, labelled (step, epoch, "train", count), and True; else False and nothing written. With
 *   relu_site (same layout), max(y, 0) into that site's stream too, in the same pass.
 *
 * pair_grads(recorder, relu_layer, layer, kind, cdim, step, epoch, grad_inputs, grad_outputs) -> None
 *   The backward hook of Recorder.run_pair, registered (bound with functools.partial) as the post-hook of a
 *   recorded pair's ReLU node: the backward rows of relu_layer (from grad_outputs[0]) and of layer (from
 *   grad_inputs[0]) with tap() where it can, else with recorder._push(...); nothing once the recorder is
 *   detached (recorder._handles empty); recorder._queue_weights() at the first of a step.
 *
 * weights(w_stream, g_stream, step, epoch, tensors, sizes) -> bool
 *   When every tensor in the list and its .grad are dense float32 CPU tensors of the sizes given, flat()
 *   of the tensors into the next row of w_stream and of their gradients into g_stream (labelled
 *   (step, epoch, "train", 0)), and True; else False and nothing written.
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

/* moments() once its arguments are checked; call without the GIL. */
static void run_moments(const float *x, Py_ssize_t G, Py_ssize_t C, Py_ssize_t P, Py_ssize_t sg, Py_ssize_t sc,
                        Py_ssize_t sp, double *out, double mid, double thr, double *relu) {
    int64_t nonzero = 0, sat = 0, rnonzero = 0;
    double *s1 = out, *s2 = out + C;
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
    Py_BEGIN_ALLOW_THREADS
    run_moments(x, G, C, P, sg, sc, sp, out, mid, thr, relu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* flat() once its arguments are checked; call without the GIL. */
static void run_flat(double *out, const float **ptrs, const Py_ssize_t *sizes, Py_ssize_t k) {
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
    run_flat(out, ptrs, sizes, k);
    Py_END_ALLOW_THREADS
    PyMem_Free(ptrs);
    Py_RETURN_NONE;
}

/* ---- the recorder's hot path: tensors and streams read through the Python C API ---- */

static PyObject *F32, *CHANNELS_LAST, *TRAIN, *NO_ARGS, *CL_KWARGS;
static PyObject *S_shape, *S_stride, *S_dtype, *S_is_cpu, *S_data_ptr, *S_n, *S_capacity, *S_meta, *S_address,
    *S_row_bytes, *S_grad, *S_numel, *S_is_contiguous, *S_sites, *S__push, *S__handles, *S__weights_queued,
    *S__queue_weights, *S__phase;

static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "bind(float32, channels_last) takes 2 arguments");
        return NULL;
    }
    PyObject *kwargs = Py_BuildValue("{s:O}", "memory_format", args[1]);
    if (kwargs == NULL) {
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(F32, args[0]);
    Py_XSETREF(CHANNELS_LAST, args[1]);
    Py_XSETREF(CL_KWARGS, kwargs);
    Py_RETURN_NONE;
}

/* 1 when the attribute (or, with call, the method's result) of o is obj (identity), 0 if not, -1 on error. */
static int attr_is(PyObject *o, PyObject *name, PyObject *obj) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) {
        return -1;
    }
    int r = v == obj;
    Py_DECREF(v);
    return r;
}

/* 1 when getattr(o, name) (call: o.name()) == expected, 0 if not, -1 on error. */
static int attr_equals(PyObject *o, PyObject *name, PyObject *expected, int call) {
    PyObject *v = call ? PyObject_CallMethodNoArgs(o, name) : PyObject_GetAttr(o, name);
    if (v == NULL) {
        return -1;
    }
    int r = PyObject_RichCompareBool(v, expected, Py_EQ);
    Py_DECREF(v);
    return r;
}

/* getattr(o, name) as a Py_ssize_t (-1 with an exception on error). */
static Py_ssize_t attr_ssize(PyObject *o, PyObject *name, int call) {
    PyObject *v = call ? PyObject_CallMethodNoArgs(o, name) : PyObject_GetAttr(o, name);
    if (v == NULL) {
        return -1;
    }
    Py_ssize_t r = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return r;
}

/* getattr(o, name) (call: o.name()) as an address (NULL with an exception on error). */
static void *attr_pointer(PyObject *o, PyObject *name, int call) {
    PyObject *v = call ? PyObject_CallMethodNoArgs(o, name) : PyObject_GetAttr(o, name);
    if (v == NULL) {
        return NULL;
    }
    void *r = PyLong_AsVoidPtr(v);
    Py_DECREF(v);
    return r;
}

/* The next free row of a Stream: its index in *row, its address in *addr; 1, or 0 when the stream is
 * full, -1 on error. */
static int stream_next(PyObject *stream, Py_ssize_t *row, char **addr) {
    Py_ssize_t n = attr_ssize(stream, S_n, 0);
    Py_ssize_t capacity = n < 0 ? -1 : attr_ssize(stream, S_capacity, 0);
    if (capacity < 0) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (n >= capacity) {
        return 0;
    }
    Py_ssize_t row_bytes = attr_ssize(stream, S_row_bytes, 0);
    char *address = row_bytes < 0 ? NULL : (char *) attr_pointer(stream, S_address, 0);
    if (address == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "stream without a buffer");
        }
        return -1;
    }
    *row = n;
    *addr = address + n * row_bytes;
    return 1;
}

/* Label row `row` of a stream as Stream.reserve does: meta.append((step, epoch, "train", count)), n = row + 1. */
static int stream_commit(PyObject *stream, Py_ssize_t row, PyObject *step, PyObject *epoch, PyObject *count) {
    PyObject *meta = PyObject_GetAttr(stream, S_meta);
    if (meta == NULL) {
        return -1;
    }
    PyObject *label = PyTuple_Pack(4, step, epoch, TRAIN, count);
    int r = label == NULL ? -1 : PyList_Append(meta, label);
    Py_XDECREF(label);
    Py_DECREF(meta);
    if (r < 0) {
        return -1;
    }
    PyObject *n = PyLong_FromSsize_t(row + 1);
    r = n == NULL ? -1 : PyObject_SetAttr(stream, S_n, n);
    Py_XDECREF(n);
    return r;
}

/* 1 when y matches site's shape and strides and is float32 on the CPU, 0 if not, -1 on error. */
static int fits(PyObject *y, PyObject *site) {
    int r = attr_equals(y, S_shape, PyTuple_GET_ITEM(site, 0), 0);
    if (r == 1) {
        r = attr_equals(y, S_stride, PyTuple_GET_ITEM(site, 1), 1);
    }
    if (r == 1) {
        r = attr_is(y, S_dtype, F32);
    }
    if (r == 1) {
        r = attr_is(y, S_is_cpu, Py_True);
    }
    return r;
}

static int site_ok(PyObject *site) {
    if (!PyTuple_Check(site) || PyTuple_GET_SIZE(site) != 13) {
        PyErr_SetString(PyExc_TypeError, "tap: a site is a 13-tuple");
        return 0;
    }
    return 1;
}

/* tap() without the argument parsing: 1 written, 0 not (nothing written), -1 error. relu_site may be NULL. */
static int tap_impl(PyObject *y, PyObject *site, PyObject *step, PyObject *epoch, PyObject *relu_site) {
    if (F32 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "tap: bind() first");
        return -1;
    }
    if (site == Py_None || relu_site == Py_None) {
        return 0;
    }
    if (!site_ok(site) || (relu_site != NULL && !site_ok(relu_site))) {
        return -1;
    }
    int r = fits(y, site);
    if (r == 1 && relu_site != NULL) {
        r = PyObject_RichCompareBool(PyTuple_GET_ITEM(relu_site, 0), PyTuple_GET_ITEM(site, 0), Py_EQ);
        if (r == 1) {
            r = PyObject_RichCompareBool(PyTuple_GET_ITEM(relu_site, 1), PyTuple_GET_ITEM(site, 1), Py_EQ);
        }
    }
    Py_ssize_t row = 0, relu_row = 0;
    char *out = NULL, *relu_out = NULL;
    if (r == 1) {
        r = stream_next(PyTuple_GET_ITEM(site, 2), &row, &out);
    }
    if (r == 1 && relu_site != NULL) {
        r = stream_next(PyTuple_GET_ITEM(relu_site, 2), &relu_row, &relu_out);
    }
    if (r <= 0) {
        return r;
    }
    Py_ssize_t dims[6];
    for (int i = 0; i < 6; i++) {
        dims[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(site, 3 + i));
    }
    Py_ssize_t offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(site, 10));
    double mid = PyFloat_AsDouble(PyTuple_GET_ITEM(site, 11));
    double thr = PyFloat_AsDouble(PyTuple_GET_ITEM(site, 12));
    char *base = PyErr_Occurred() ? NULL : (char *) attr_pointer(y, S_data_ptr, 1);
    if (base == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "tap: null data pointer");
        }
        return -1;
    }
    const float *x = (const float *) (base + offset);
    Py_BEGIN_ALLOW_THREADS
    run_moments(x, dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], (double *) out, mid, thr,
                (double *) relu_out);
    Py_END_ALLOW_THREADS
    if (stream_commit(PyTuple_GET_ITEM(site, 2), row, step, epoch, PyTuple_GET_ITEM(site, 9)) < 0) {
        return -1;
    }
    if (relu_site != NULL &&
        stream_commit(PyTuple_GET_ITEM(relu_site, 2), relu_row, step, epoch, PyTuple_GET_ITEM(relu_site, 9)) < 0) {
        return -1;
    }
    return 1;
}

static PyObject *tap(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "tap(y, site, step, epoch[, relu_site]) takes 4 or 5 arguments");
        return NULL;
    }
    int r = tap_impl(args[0], args[1], args[2], args[3], nargs == 5 ? args[4] : NULL);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

/* One gradient of pair_grads(): the C path when it can, else recorder._push(target, kind, grad, cdim, None,
 * step, epoch). 0, or -1 on error. */
static int pair_grad(PyObject *rec, PyObject *target, PyObject *kind, PyObject *cdim, PyObject *step,
                     PyObject *epoch, PyObject *grad, int train) {
    if (grad == Py_None) {
        return 0;
    }
    int r = 0;
    if (train) {
        PyObject *sites = PyObject_GetAttr(target, S_sites);
        if (sites == NULL) {
            return -1;
        }
        PyObject *site = PyDict_Check(sites) ? PyDict_GetItemWithError(sites, kind) : NULL;  /* borrowed */
        r = site != NULL ? tap_impl(grad, site, step, epoch, NULL) : (PyErr_Occurred() ? -1 : 0);
        Py_DECREF(sites);
    }
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    PyObject *args[] = {rec, target, kind, grad, cdim, Py_None, step, epoch};
    PyObject *res = PyObject_VectorcallMethod(S__push, args, 8 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

static PyObject *pair_grads(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "pair_grads(recorder, relu_layer, layer, kind, cdim, step, epoch, "
                                         "grad_inputs, grad_outputs) takes 9 arguments");
        return NULL;
    }
    PyObject *rec = args[0], *grad_inputs = args[7], *grad_outputs = args[8];
    if (!PyTuple_Check(grad_inputs) || !PyTuple_Check(grad_outputs) || PyTuple_GET_SIZE(grad_inputs) < 1 ||
        PyTuple_GET_SIZE(grad_outputs) < 1) {
        PyErr_SetString(PyExc_TypeError, "pair_grads: grad_inputs and grad_outputs are non-empty tuples");
        return NULL;
    }
    PyObject *handles = PyObject_GetAttr(rec, S__handles);
    int active = handles == NULL ? -1 : PyObject_IsTrue(handles);
    Py_XDECREF(handles);
    if (active <= 0) {
        return active < 0 ? NULL : Py_NewRef(Py_None);
    }
    int queued = attr_is(rec, S__weights_queued, Py_True);
    if (queued < 0) {
        return NULL;
    }
    if (queued == 0) {
        PyObject *res = PyObject_CallMethodNoArgs(rec, S__queue_weights);
        if (res == NULL) {
            return NULL;
        }
        Py_DECREF(res);
    }
    PyObject *phase = PyObject_GetAttr(rec, S__phase);
    if (phase == NULL) {
        return NULL;
    }
    int train = PyUnicode_Check(phase) && PyUnicode_CompareWithASCIIString(phase, "train") == 0;
    Py_DECREF(phase);
    if (pair_grad(rec, args[1], args[3], args[4], args[5], args[6], PyTuple_GET_ITEM(grad_outputs, 0), train) < 0 ||
        pair_grad(rec, args[2], args[3], args[4], args[5], args[6], PyTuple_GET_ITEM(grad_inputs, 0), train) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* 1 when t is a dense (contiguous or channels-last) float32 CPU tensor of `size` elements, 0 if not,
 * -1 on error. */
static int dense(PyObject *t, Py_ssize_t size) {
    int r = attr_is(t, S_dtype, F32);
    if (r == 1) {
        r = attr_is(t, S_is_cpu, Py_True);
    }
    if (r == 1) {
        Py_ssize_t n = attr_ssize(t, S_numel, 1);
        r = n < 0 ? (PyErr_Occurred() ? -1 : 0) : n == size;
    }
    if (r == 1) {
        PyObject *method = PyObject_GetAttr(t, S_is_contiguous);
        if (method == NULL) {
            return -1;
        }
        PyObject *v = PyObject_Call(method, NO_ARGS, NULL);
        if (v != NULL && v != Py_True) {
            Py_DECREF(v);
            v = PyObject_Call(method, NO_ARGS, CL_KWARGS);
        }
        Py_DECREF(method);
        if (v == NULL) {
            return -1;
        }
        r = v == Py_True;
        Py_DECREF(v);
    }
    return r;
}

static PyObject *weights(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void) self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "weights(w_stream, g_stream, step, epoch, tensors, sizes) takes 6 arguments");
        return NULL;
    }
    if (F32 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "weights: bind() first");
        return NULL;
    }
    PyObject *tensors = args[4], *sizes_obj = args[5];
    if (!PyList_Check(tensors) || !PyTuple_Check(sizes_obj) || PyList_GET_SIZE(tensors) != PyTuple_GET_SIZE(sizes_obj)) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t k = PyList_GET_SIZE(tensors);
    const float **ptrs = PyMem_Malloc((size_t) (k > 0 ? 2 * k : 1) * (sizeof(float *) + sizeof(Py_ssize_t)));
    if (ptrs == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t *sizes = (Py_ssize_t *) (ptrs + (k > 0 ? 2 * k : 1));
    int r = k > 0;
    for (Py_ssize_t j = 0; j < k && r == 1; j++) {
        PyObject *w = PyList_GET_ITEM(tensors, j);
        sizes[j] = sizes[k + j] = PyLong_AsSsize_t(PyTuple_GET_ITEM(sizes_obj, j));
        if (sizes[j] < 0) {
            r = PyErr_Occurred() ? -1 : 0;
            break;
        }
        r = dense(w, sizes[j]);
        PyObject *g = r == 1 ? PyObject_GetAttr(w, S_grad) : NULL;
        if (r == 1 && g == NULL) {
            r = -1;
        }
        if (r == 1) {
            r = g != Py_None ? dense(g, sizes[j]) : 0;
        }
        if (r == 1) {
            ptrs[j] = (const float *) attr_pointer(w, S_data_ptr, 1);
            ptrs[k + j] = ptrs[j] == NULL ? NULL : (const float *) attr_pointer(g, S_data_ptr, 1);
            if (ptrs[j] == NULL || ptrs[k + j] == NULL) {
                r = PyErr_Occurred() ? -1 : 0;
            }
        }
        Py_XDECREF(g);
    }
    Py_ssize_t w_row = 0, g_row = 0;
    char *w_out = NULL, *g_out = NULL;
    if (r == 1) {
        r = stream_next(args[0], &w_row, &w_out);
    }
    if (r == 1) {
        r = stream_next(args[1], &g_row, &g_out);
    }
    if (r == 1) {
        Py_BEGIN_ALLOW_THREADS
        run_flat((double *) w_out, ptrs, sizes, k);
        run_flat((double *) g_out, ptrs + k, sizes + k, k);
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(ptrs);
    if (r < 0) {
        return NULL;
    }
    if (r == 0) {
        Py_RETURN_FALSE;
    }
    PyObject *zero = PyLong_FromLong(0);
    int ok = zero != NULL && stream_commit(args[0], w_row, args[2], args[3], zero) == 0 &&
             stream_commit(args[1], g_row, args[2], args[3], zero) == 0;
    Py_XDECREF(zero);
    if (!ok) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"moments", (PyCFunction) (void (*)(void)) moments, METH_FASTCALL,
     "moments(ptr, G, C, P, sg, sc, sp, out, mid, thr[, relu_out]): per-channel sums, sums of squares, "
     "non-zero and saturated counts of a float32 tensor, written as doubles at out (and those of max(x, 0) "
     "at relu_out)."},
    {"flat", (PyCFunction) (void (*)(void)) flat, METH_FASTCALL,
     "flat(out, ptr_0, n_0, ...): sum, sum of squares, non-zero count and 0 of each contiguous float32 "
     "block, written as 4 doubles per block at out."},
    {"bind", (PyCFunction) (void (*)(void)) bind, METH_FASTCALL,
     "bind(float32, channels_last): the torch objects that tap() and weights() compare with."},
    {"tap", (PyCFunction) (void (*)(void)) tap, METH_FASTCALL,
     "tap(y, site, step, epoch[, relu_site]) -> bool: moments() of y into the next row of the site's "
     "stream when y has the site's layout and the stream has room."},
    {"pair_grads", (PyCFunction) (void (*)(void)) pair_grads, METH_FASTCALL,
     "pair_grads(recorder, relu_layer, layer, kind, cdim, step, epoch, grad_inputs, grad_outputs): the "
     "backward rows of a pair recorded by Recorder.run_pair."},
    {"weights", (PyCFunction) (void (*)(void)) weights, METH_FASTCALL,
     "weights(w_stream, g_stream, step, epoch, tensors, sizes) -> bool: flat() of the tensors and of their "
     "gradients into the next rows of the two streams when all are dense float32 CPU tensors."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastmoments", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastmoments(void) {
    struct { PyObject **slot; const char *name; } names[] = {
        {&S_shape, "shape"}, {&S_stride, "stride"}, {&S_dtype, "dtype"}, {&S_is_cpu, "is_cpu"},
        {&S_data_ptr, "data_ptr"}, {&S_n, "n"}, {&S_capacity, "capacity"}, {&S_meta, "meta"},
        {&S_address, "address"}, {&S_row_bytes, "row_bytes"}, {&S_grad, "grad"}, {&S_numel, "numel"},
        {&S_is_contiguous, "is_contiguous"}, {&TRAIN, "train"}, {&S_sites, "sites"}, {&S__push, "_push"},
        {&S__handles, "_handles"}, {&S__weights_queued, "_weights_queued"}, {&S__queue_weights, "_queue_weights"},
        {&S__phase, "_phase"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL) {
            return NULL;
        }
    }
    NO_ARGS = PyTuple_New(0);
    if (NO_ARGS == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
