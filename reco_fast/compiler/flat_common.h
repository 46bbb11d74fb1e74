/* The C both flat evaluators share (flat_template.c: float32 compares; flat64_template.c:
 * float64 compares). Each includes it after its forest's arrays, having defined:
 *   RQ_NF, RQ_NT, RQ_D, RQ_NN, RQ_NL  features; trees; depth, nodes and leaves of a tree
 *   rq_cmp          the compare type (float or double): thresholds and row buffers
 *   RQ_READ(v)      an input value as the trees compare it
 *   RQ_RANGE        the largest magnitude an input may have (FLT_MAX or DBL_MAX)
 *   RQ_NAN_ROUTED   1: NaN is a valid input (rq_nan_right[node]: 1 sends it right)
 *   RQ_SPARSE       1: the template defines rq_margin_row and rq_margin_block (after this)
 *   RQ_ROW_BY_ROW   a last block of at most this many rows is scored by rq_margin_row
 *                   (needs rq_cmp double; 0: never)
 *   RQ_LINK(M)      the model's output from its margin
 *   rq_feature, rq_threshold, rq_leaf, rq_base (and rq_nan_right where routed)
 * It defines the portable kernels (complete trees), rq_predict_one, rq_margin_one and the
 * *_portable entry points; the rest are macros the templates expand. */
#define RQ_BLOCK 8

/* Per-call row buffers (a block of rows as rq_cmp) live on the stack only while they fit
 * RQ_STACK_MAX bytes; a wider model's come from the heap, once per call. No stack frame
 * grows with the model, so any model runs in a thread with a small stack. */
#define RQ_STACK_MAX 8192
#define RQ_ON_STACK(COUNT) ((COUNT) * sizeof(rq_cmp) <= RQ_STACK_MAX)
#define RQ_BUFFER(NAME, COUNT)                                                        \
  rq_cmp NAME##_stack[RQ_ON_STACK(COUNT) ? (COUNT) : 1] __attribute__((aligned(64))); \
  rq_cmp* NAME = RQ_ON_STACK(COUNT) ? NAME##_stack : rq_heap(COUNT)
#define RQ_RELEASE(NAME, COUNT) do { if (!RQ_ON_STACK(COUNT)) free(NAME); } while (0)
/* what a batch entry point returns when it cannot allocate its buffer */
#define RQ_NO_MEMORY ((ptrdiff_t)-2)

static rq_cmp* rq_heap(size_t count) {
  return (rq_cmp*)aligned_alloc(64, (count * sizeof(rq_cmp) + 63) / 64 * 64);
}

/* NaN goes where the model learned: left (NaN > t is false) or, where rq_nan_right is
 * set, right. */
#if RQ_NAN_ROUTED
#define RQ_RIGHT(V, T, NODE) \
  ((unsigned)((V) > (T)) | ((unsigned)((V) != (V)) & (unsigned)rq_nan_right[NODE]))
#else
#define RQ_RIGHT(V, T, NODE) ((unsigned)((V) > (T)))
#endif

static inline double rq_sigmoid(double margin) { return 1.0 / (1.0 + exp(-margin)); }
#define RQ_MARGIN(M) (M)

/* The portable kernels: the margin (rq_base included) of one row, and of RQ_BLOCK rows
 * (x row-major, values already read by RQ_READ). */
static double rq_margin_row(const double* x);
static void rq_margin_block(const rq_cmp* x /* [RQ_BLOCK][RQ_NF] */, double* out);

#if !RQ_SPARSE
/* Every flat path sums tree t into group t % 4 and returns (g0 + g1) + (g2 + g3) + base,
 * the order the AVX2 kernels' accumulators impose, so all paths agree bit for bit. */
static double rq_margin_row(const double* x) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (int t = 0; t < RQ_NT; ++t) {
    const int32_t* f = rq_feature + t * RQ_NN;
    const rq_cmp* th = rq_threshold + t * RQ_NN;
    unsigned idx = 0;
    for (int l = 0; l < RQ_D; ++l) {
      const unsigned node = (1u << l) - 1u + idx;
      const rq_cmp v = RQ_READ(x[f[node]]);
      idx = 2u * idx + RQ_RIGHT(v, th[node], t * RQ_NN + node);
    }
    acc[t % 4] += rq_leaf[t * RQ_NL + idx];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + rq_base;
}

/* rows interleaved per tree so the dependent loads of one row overlap the others' */
static void rq_margin_block(const rq_cmp* x, double* out) {
  double acc[4][RQ_BLOCK] = {{0}};
  for (int t = 0; t < RQ_NT; ++t) {
    const int32_t* f = rq_feature + t * RQ_NN;
    const rq_cmp* th = rq_threshold + t * RQ_NN;
    unsigned idx[RQ_BLOCK] = {0};
    for (int l = 0; l < RQ_D; ++l) {
      for (int r = 0; r < RQ_BLOCK; ++r) {
        const unsigned node = (1u << l) - 1u + idx[r];
        idx[r] = 2u * idx[r] + RQ_RIGHT(x[r * RQ_NF + f[node]], th[node], t * RQ_NN + node);
      }
    }
    for (int r = 0; r < RQ_BLOCK; ++r) acc[t % 4][r] += rq_leaf[t * RQ_NL + idx[r]];
  }
  for (int r = 0; r < RQ_BLOCK; ++r)
    out[r] = ((acc[0][r] + acc[1][r]) + (acc[2][r] + acc[3][r])) + rq_base;
}
#endif

double rq_predict_one(const double* x) { return RQ_LINK(rq_margin_row(x)); }
double rq_margin_one(const double* x) { return rq_margin_row(x); }

/* ---- batch drivers: one per kernel and entry point ------------------------------------
 * A kernel scores a block of W rows: the portable one (SIMD 0) reads them row-major and
 * adds rq_base itself; a SIMD one (SIMD 1) reads them feature-major, x[j * W + r], and
 * leaves rq_base to its driver. A short last block repeats its last row. */
#define RQ_AT(SIMD, W, R, J) ((SIMD) ? (J) * (W) + (R) : (R) * RQ_NF + (J))
#define RQ_ANY_CPU /* no target attribute */

/* Batch entry points check every value as they copy it (finite and within RQ_RANGE; NaN
 * where routed) and return the flat index of the first bad one, or -1: validation costs
 * no extra pass over the input. RQ_NO_MEMORY: nothing scored. */
#define RQ_BAD(v) (!(fabs((double)(v)) <= RQ_RANGE) && !(RQ_NAN_ROUTED && (v) != (v)))

#if RQ_ROW_BY_ROW
/* a last block of k <= RQ_ROW_BY_ROW rows, scored row by row (rq_margin_row: the same
 * sums in the same order): a block costs W rows whatever it holds */
#define RQ_TAIL(T, LINK)                                                               \
  if (k <= RQ_ROW_BY_ROW) {                                                            \
    for (size_t r = 0; r < k; ++r) {                                                   \
      const T* x = X + (i + r) * RQ_NF;                                                \
      for (int j = 0; j < RQ_NF; ++j) {                                                \
        if (RQ_BAD(x[j])) {                                                            \
          bad = (ptrdiff_t)((i + r) * RQ_NF + j);                                      \
          goto done;                                                                   \
        }                                                                              \
        xb[j] = (double)x[j];                                                          \
      }                                                                                \
      out[i + r] = LINK(rq_margin_row(xb));                                            \
    }                                                                                  \
    break;                                                                             \
  }
#else
#define RQ_TAIL(T, LINK)
#endif

#define RQ_BATCH(NAME, T, LINK, TARGET, W, SIMD, KERNEL)                               \
  TARGET ptrdiff_t NAME(const T* X, size_t n_rows, double* out) {                     \
    RQ_BUFFER(xb, RQ_NF * W);                                                          \
    if (!xb) return RQ_NO_MEMORY;                                                      \
    ptrdiff_t bad = -1;                                                                \
    double m[W];                                                                       \
    for (size_t i = 0; i < n_rows; i += W) {                                           \
      const size_t k = n_rows - i < W ? n_rows - i : W;                                \
      RQ_TAIL(T, LINK)                                                                 \
      for (size_t r = 0; r < W; ++r) {                                                 \
        const size_t row = i + (r < k ? r : k - 1);                                    \
        const T* x = X + row * RQ_NF;                                                  \
        for (int j = 0; j < RQ_NF; ++j) {                                              \
          if (RQ_BAD(x[j])) {                                                          \
            bad = (ptrdiff_t)(row * RQ_NF + j);                                        \
            goto done;                                                                 \
          }                                                                            \
          xb[RQ_AT(SIMD, W, r, j)] = RQ_READ(x[j]);                                    \
        }                                                                              \
      }                                                                                \
      KERNEL(xb, m);                                                                   \
      for (size_t r = 0; r < k; ++r) out[i + r] = LINK(SIMD ? m[r] + rq_base : m[r]);  \
    }                                                                                  \
  done:                                                                                \
    RQ_RELEASE(xb, RQ_NF * W);                                                         \
    return bad;                                                                        \
  }

/* Rows that share their first n_prefix features (one session against many products):
 * the shared part is read once; the rest comes feature-major, rest[j * n_rows + i].
 * Out of memory: every out[i] is NaN (never at or above a threshold). */
static void rq_fill_nan(double* out, size_t n_rows) {
  for (size_t i = 0; i < n_rows; ++i) out[i] = NAN;
}

#define RQ_PREFIX(NAME, TARGET, W, SIMD, KERNEL)                                       \
  TARGET void NAME(const double* prefix, size_t n_prefix, const double* rest,          \
                   size_t n_rows, double* out) {                                       \
    RQ_BUFFER(xb, RQ_NF * W);                                                          \
    if (!xb) { rq_fill_nan(out, n_rows); return; }                                     \
    double m[W];                                                                       \
    for (size_t j = 0; j < n_prefix; ++j)                                              \
      for (size_t r = 0; r < W; ++r) xb[RQ_AT(SIMD, W, r, j)] = RQ_READ(prefix[j]);    \
    for (size_t i = 0; i < n_rows; i += W) {                                           \
      const size_t k = n_rows - i < W ? n_rows - i : W;                                \
      for (size_t j = n_prefix; j < RQ_NF; ++j) {                                      \
        const double* col = rest + (j - n_prefix) * n_rows;                            \
        for (size_t r = 0; r < W; ++r)                                                 \
          xb[RQ_AT(SIMD, W, r, j)] = RQ_READ(col[i + (r < k ? r : k - 1)]);            \
      }                                                                                \
      KERNEL(xb, m);                                                                   \
      for (size_t r = 0; r < k; ++r) out[i + r] = RQ_LINK(SIMD ? m[r] + rq_base : m[r]); \
    }                                                                                  \
    RQ_RELEASE(xb, RQ_NF * W);                                                         \
  }

/* The batch entry points of one kernel (flat.h): rq_predict_f64_KIND, ..._f32_KIND,
 * rq_margin_f64_KIND, ..._f32_KIND and rq_predict_prefix_KIND; TARGET is the functions'
 * target attribute (RQ_ANY_CPU: none). */
#define RQ_ENTRY_POINTS(KIND, TARGET, W, SIMD, KERNEL)                                 \
  RQ_BATCH(rq_predict_f64_##KIND, double, RQ_LINK, TARGET, W, SIMD, KERNEL)            \
  RQ_BATCH(rq_predict_f32_##KIND, float, RQ_LINK, TARGET, W, SIMD, KERNEL)             \
  RQ_BATCH(rq_margin_f64_##KIND, double, RQ_MARGIN, TARGET, W, SIMD, KERNEL)           \
  RQ_BATCH(rq_margin_f32_##KIND, float, RQ_MARGIN, TARGET, W, SIMD, KERNEL)            \
  RQ_PREFIX(rq_predict_prefix_##KIND, TARGET, W, SIMD, KERNEL)

RQ_ENTRY_POINTS(portable, RQ_ANY_CPU, RQ_BLOCK, 0, rq_margin_block)

/* A SIMD kernel's accumulators, W-bit registers (256: AVX2, 512: AVX-512) of doubles:
 * tree t adds into group t % 4 (lo and hi: the block's two halves of rows), and out gets
 * (g0 + g1) + (g2 + g3), the portable kernels' order; the driver adds rq_base. */
#define RQ_GROUPS(W)                                                                   \
  __m##W##d g0lo = _mm##W##_setzero_pd(), g0hi = g0lo, g1lo = g0lo, g1hi = g0lo,      \
            g2lo = g0lo, g2hi = g0lo, g3lo = g0lo, g3hi = g0lo
#define RQ_GROUPS_SUM(W)                                                               \
  _mm##W##_storeu_pd(out, _mm##W##_add_pd(_mm##W##_add_pd(g0lo, g1lo),                 \
                                          _mm##W##_add_pd(g2lo, g3lo)));               \
  _mm##W##_storeu_pd(out + (W) / 64, _mm##W##_add_pd(_mm##W##_add_pd(g0hi, g1hi),      \
                                                     _mm##W##_add_pd(g2hi, g3hi)))

/* Kernels a build lacks (an instruction set on another architecture, or trees too deep
 * for it): the entry points exist, report the CPU feature absent (so Python never selects
 * them) and forward to the portable ones. */
#define RQ_FORWARD(KIND)                                                               \
  int rq_has_##KIND(void) { return 0; }                                                \
  ptrdiff_t rq_predict_f64_##KIND(const double* X, size_t n_rows, double* out) {      \
    return rq_predict_f64_portable(X, n_rows, out);                                   \
  }                                                                                   \
  ptrdiff_t rq_predict_f32_##KIND(const float* X, size_t n_rows, double* out) {       \
    return rq_predict_f32_portable(X, n_rows, out);                                   \
  }                                                                                   \
  void rq_predict_prefix_##KIND(const double* prefix, size_t n_prefix,                \
                                const double* rest, size_t n_rows, double* out) {     \
    rq_predict_prefix_portable(prefix, n_prefix, rest, n_rows, out);                  \
  }                                                                                   \
  ptrdiff_t rq_margin_f64_##KIND(const double* X, size_t n_rows, double* out) {       \
    return rq_margin_f64_portable(X, n_rows, out);                                    \
  }                                                                                   \
  ptrdiff_t rq_margin_f32_##KIND(const float* X, size_t n_rows, double* out) {        \
    return rq_margin_f32_portable(X, n_rows, out);                                    \
  }
