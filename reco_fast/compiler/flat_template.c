/* reco_fast flat evaluator: complete trees, branch-free, float32 compares.
 * Generated from treelite's model by reco_fast.compiler.codegen; see reco_fast/compiler/ir.py
 * for why float32 compares with thresholds rounded down are exact. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <float.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RQ_X86 1
#endif
#include "flat.h" /* the entry points' declarations, also cffi's cdef */

#define RQ_NF @N_FEATURES@
#define RQ_NT @N_TREES@
#define RQ_D @DEPTH@
#define RQ_NN ((1 << RQ_D) - 1)
#define RQ_NL (1 << RQ_D)
#define RQ_BLOCK 8
#define RQ_HAVE_AVX512 @HAVE_AVX512@

/* Per-call row buffers (a block of rows as float32) live on the stack only while they fit
 * RQ_STACK_MAX bytes; a wider model's come from the heap, once per call. No stack frame
 * grows with the model, so any model runs in a thread with a small stack. */
#define RQ_STACK_MAX 8192
#define RQ_ON_STACK(COUNT) ((COUNT) * sizeof(float) <= RQ_STACK_MAX)
#define RQ_BUFFER(NAME, COUNT)                                                        \
  float NAME##_stack[RQ_ON_STACK(COUNT) ? (COUNT) : 1] __attribute__((aligned(64)));  \
  float* NAME = RQ_ON_STACK(COUNT) ? NAME##_stack : rq_heap_floats(COUNT)
#define RQ_RELEASE(NAME, COUNT) do { if (!RQ_ON_STACK(COUNT)) free(NAME); } while (0)
/* what a batch entry point returns when it cannot allocate its buffer */
#define RQ_NO_MEMORY ((ptrdiff_t)-2)

static float* rq_heap_floats(size_t count) {
  return (float*)aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64);
}

static const int32_t rq_feature[RQ_NT * RQ_NN] = {@FEATURES@};
static const float rq_threshold[RQ_NT * RQ_NN] = {@THRESHOLDS@};
static const double rq_leaf[RQ_NT * RQ_NL] = {@LEAVES@};
static const double rq_base = @BASE@;

/* 1: NaN is a valid input and each node sends it where the model learned: left (NaN > t
 * is false) or, where rq_nan_right is set, right (!(NaN <= t) is true). */
#define RQ_NAN_ROUTED @NAN_ROUTED@
#if RQ_NAN_ROUTED
static const uint8_t rq_nan_right[RQ_NT * RQ_NN] = {@NAN_RIGHT@};
#define RQ_RIGHT(V, T, NODE) \
  ((unsigned)((V) > (T)) | ((unsigned)((V) != (V)) & (unsigned)rq_nan_right[NODE]))
#else
#define RQ_RIGHT(V, T, NODE) ((unsigned)((V) > (T)))
#endif

static inline double rq_sigmoid(double margin) { return 1.0 / (1.0 + exp(-margin)); }
/* the model's output from its margin: sigmoid (a probability) or identity (a score) */
#define RQ_LINK(M) @LINK@
#define RQ_MARGIN(M) (M)

/* ---- portable: any CPU ---------------------------------------------------------------- */
/* Every flat path sums tree t into group t % 4 and returns (g0 + g1) + (g2 + g3) + base,
 * the order the AVX2 kernel's accumulators impose, so all paths agree bit for bit. */
static double rq_margin_row(const double* x) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (int t = 0; t < RQ_NT; ++t) {
    const int32_t* f = rq_feature + t * RQ_NN;
    const float* th = rq_threshold + t * RQ_NN;
    unsigned idx = 0;
    for (int l = 0; l < RQ_D; ++l) {
      const unsigned node = (1u << l) - 1u + idx;
      const float v = (float)x[f[node]]; /* scikit-learn's float32 rounding */
      idx = 2u * idx + RQ_RIGHT(v, th[node], t * RQ_NN + node);
    }
    acc[t % 4] += rq_leaf[t * RQ_NL + idx];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + rq_base;
}

/* rows interleaved per tree so the dependent loads of one row overlap the others' */
static void rq_margin_block(const float* x /* [RQ_BLOCK][RQ_NF] */, double* out) {
  double acc[4][RQ_BLOCK] = {{0}};
  for (int t = 0; t < RQ_NT; ++t) {
    const int32_t* f = rq_feature + t * RQ_NN;
    const float* th = rq_threshold + t * RQ_NN;
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

double rq_predict_one(const double* x) { return RQ_LINK(rq_margin_row(x)); }
double rq_margin_one(const double* x) { return rq_margin_row(x); }

/* The forest itself, for the whole-catalog top-k (reco_fast/compiler/topk_cells.c): node
 * features, float32 thresholds (rounded down) and leaves of complete trees, as above. */
void rq_forest(const int32_t** feature, const float** threshold, const double** leaf,
               double* base, int32_t* shape /* n_trees, depth, n_features, sigmoid link */) {
  *feature = rq_feature;
  *threshold = rq_threshold;
  *leaf = rq_leaf;
  *base = rq_base;
  shape[0] = RQ_NT;
  shape[1] = RQ_D;
  shape[2] = RQ_NF;
  shape[3] = RQ_LINK(0.0) == 0.5;
}

/* Batch entry points check every value as they convert it (finite and within float32's
 * range) and return the flat index of the first bad one, or -1: validation costs no
 * extra pass over the input. RQ_NO_MEMORY: nothing scored. */
#define RQ_BAD(v) (!(fabs((double)(v)) <= (double)FLT_MAX) && !(RQ_NAN_ROUTED && (v) != (v)))

#define RQ_PORTABLE(NAME, T, LINK)                                                     \
  ptrdiff_t NAME(const T* X, size_t n_rows, double* out) {                            \
    RQ_BUFFER(xb, RQ_BLOCK * RQ_NF);                                                  \
    if (!xb) return RQ_NO_MEMORY;                                                     \
    ptrdiff_t bad = -1;                                                               \
    double m[RQ_BLOCK];                                                               \
    for (size_t i = 0; i < n_rows; i += RQ_BLOCK) {                                   \
      const size_t k = n_rows - i < RQ_BLOCK ? n_rows - i : RQ_BLOCK;                 \
      for (size_t r = 0; r < RQ_BLOCK; ++r) {                                         \
        const T* x = X + (i + (r < k ? r : k - 1)) * RQ_NF;                           \
        for (int j = 0; j < RQ_NF; ++j) {                                             \
          if (RQ_BAD(x[j])) {                                                         \
            bad = (ptrdiff_t)((i + (r < k ? r : k - 1)) * RQ_NF + j);                 \
            goto done;                                                                \
          }                                                                           \
          xb[r * RQ_NF + j] = (float)x[j];                                            \
        }                                                                             \
      }                                                                               \
      rq_margin_block(xb, m);                                                         \
      for (size_t r = 0; r < k; ++r) out[i + r] = LINK(m[r]);                         \
    }                                                                                 \
  done:                                                                               \
    RQ_RELEASE(xb, RQ_BLOCK * RQ_NF);                                                 \
    return bad;                                                                       \
  }
RQ_PORTABLE(rq_predict_f64_portable, double, RQ_LINK)
RQ_PORTABLE(rq_predict_f32_portable, float, RQ_LINK)
RQ_PORTABLE(rq_margin_f64_portable, double, RQ_MARGIN)
RQ_PORTABLE(rq_margin_f32_portable, float, RQ_MARGIN)

/* Rows that share their first n_prefix features (one session against many products):
 * the shared part is converted once; the rest comes feature-major, rest[j * n_rows + i].
 * Out of memory: every out[i] is NaN (never at or above a threshold). */
static void rq_fill_nan(double* out, size_t n_rows) {
  for (size_t i = 0; i < n_rows; ++i) out[i] = NAN;
}

void rq_predict_prefix_portable(const double* prefix, size_t n_prefix, const double* rest,
                                size_t n_rows, double* out) {
  RQ_BUFFER(xb, RQ_BLOCK * RQ_NF);
  if (!xb) { rq_fill_nan(out, n_rows); return; }
  double m[RQ_BLOCK];
  for (size_t r = 0; r < RQ_BLOCK; ++r)
    for (size_t j = 0; j < n_prefix; ++j) xb[r * RQ_NF + j] = (float)prefix[j];
  for (size_t i = 0; i < n_rows; i += RQ_BLOCK) {
    const size_t k = n_rows - i < RQ_BLOCK ? n_rows - i : RQ_BLOCK;
    for (size_t r = 0; r < RQ_BLOCK; ++r)
      for (size_t j = n_prefix; j < RQ_NF; ++j)
        xb[r * RQ_NF + j] = (float)rest[(j - n_prefix) * n_rows + i + (r < k ? r : k - 1)];
    rq_margin_block(xb, m);
    for (size_t r = 0; r < k; ++r) out[i + r] = RQ_LINK(m[r]);
  }
  RQ_RELEASE(xb, RQ_BLOCK * RQ_NF);
}

/* ---- SIMD: AVX2 (8 rows per register) and AVX-512 (16), chosen at run time ---------- */
#ifdef RQ_X86
/* Two ways to walk a tree for a block of rows, both branch-free:
 * - QuickScorer (depth <= 5, leaves fit a 32-bit lane): every node whose test is false
 *   (x > t, go right) clears its left subtree's leaves from a bit vector; the exit leaf is
 *   the lowest bit left. Padded nodes never go right and emit no code.
 * - blends (deeper trees): every node compared, the path picked level by level.
 * Tree t adds into accumulator group t % 4; the groups are summed as
 * (g0 + g1) + (g2 + g3), as in every other flat path. */
#define RQ8_GT(F, T) _mm256_cmp_ps(_mm256_load_ps(xT + 8 * (F)), _mm256_set1_ps(T), _CMP_GT_OQ)
/* a node that sends NaN right: !(x <= t), true for NaN */
#define RQ8_GTN(F, T) _mm256_cmp_ps(_mm256_load_ps(xT + 8 * (F)), _mm256_set1_ps(T), _CMP_NLE_UQ)
#define RQ8_SEL(A, B, M) _mm256_blendv_ps((A), (B), (M))
#define RQ8_Z _mm256_setzero_ps()
#define RQ8_BIT(M, W) _mm256_and_si256(_mm256_castps_si256(M), _mm256_set1_epi32(W))
#define RQ8_CUT(F, T, L) \
  v = _mm256_andnot_si256(_mm256_and_si256(_mm256_castps_si256(RQ8_GT(F, T)), \
                                           _mm256_set1_epi32((int)(L))), v)
#define RQ8_CUTN(F, T, L) \
  v = _mm256_andnot_si256(_mm256_and_si256(_mm256_castps_si256(RQ8_GTN(F, T)), \
                                           _mm256_set1_epi32((int)(L))), v)
#define RQ8_LOWEST(V) \
  _mm256_sub_epi32( \
      _mm256_and_si256( \
          _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_and_si256( \
                                (V), _mm256_sub_epi32(_mm256_setzero_si256(), (V))))), 23), \
          _mm256_set1_epi32(0xFF)), \
      _mm256_set1_epi32(127))
#define RQ8_ADD(G, TREE, I) \
  G##lo = _mm256_add_pd(G##lo, _mm256_i32gather_pd(rq_leaf + (TREE) * RQ_NL, \
                                                   _mm256_castsi256_si128(I), 8)); \
  G##hi = _mm256_add_pd(G##hi, _mm256_i32gather_pd(rq_leaf + (TREE) * RQ_NL, \
                                                   _mm256_extracti128_si256(I, 1), 8))

__attribute__((target("avx2"))) static void rq_block_avx2(const float* xT /* [RQ_NF][8] */,
                                                           double* out) {
  __m256d g0lo = _mm256_setzero_pd(), g0hi = g0lo, g1lo = g0lo, g1hi = g0lo, g2lo = g0lo,
          g2hi = g0lo, g3lo = g0lo, g3hi = g0lo;
@AVX2_TREES@
  _mm256_storeu_pd(out, _mm256_add_pd(_mm256_add_pd(g0lo, g1lo), _mm256_add_pd(g2lo, g3lo)));
  _mm256_storeu_pd(out + 4, _mm256_add_pd(_mm256_add_pd(g0hi, g1hi), _mm256_add_pd(g2hi, g3hi)));
}

#if RQ_HAVE_AVX512
#define RQ16_CUT(F, T, L) \
  v = _mm512_mask_andnot_epi32( \
      v, _mm512_cmp_ps_mask(_mm512_load_ps(xT + 16 * (F)), _mm512_set1_ps(T), _CMP_GT_OQ), \
      _mm512_set1_epi32((int)(L)), v)
#define RQ16_CUTN(F, T, L) \
  v = _mm512_mask_andnot_epi32( \
      v, _mm512_cmp_ps_mask(_mm512_load_ps(xT + 16 * (F)), _mm512_set1_ps(T), _CMP_NLE_UQ), \
      _mm512_set1_epi32((int)(L)), v)
#define RQ16_LOWEST(V) \
  _mm512_sub_epi32( \
      _mm512_and_si512( \
          _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_and_si512( \
                                (V), _mm512_sub_epi32(_mm512_setzero_si512(), (V))))), 23), \
          _mm512_set1_epi32(0xFF)), \
      _mm512_set1_epi32(127))
#define RQ16_ADD(G, TREE, I) \
  G##lo = _mm512_add_pd(G##lo, _mm512_i32gather_pd(_mm512_castsi512_si256(I), \
                                                   rq_leaf + (TREE) * RQ_NL, 8)); \
  G##hi = _mm512_add_pd(G##hi, _mm512_i32gather_pd(_mm512_extracti64x4_epi64(I, 1), \
                                                   rq_leaf + (TREE) * RQ_NL, 8))

__attribute__((target("avx512f"))) static void rq_block_avx512(
    const float* xT /* [RQ_NF][16] */, double* out) {
  __m512d g0lo = _mm512_setzero_pd(), g0hi = g0lo, g1lo = g0lo, g1hi = g0lo, g2lo = g0lo,
          g2hi = g0lo, g3lo = g0lo, g3hi = g0lo;
@AVX512_TREES@
  _mm512_storeu_pd(out, _mm512_add_pd(_mm512_add_pd(g0lo, g1lo), _mm512_add_pd(g2lo, g3lo)));
  _mm512_storeu_pd(out + 8, _mm512_add_pd(_mm512_add_pd(g0hi, g1hi), _mm512_add_pd(g2hi, g3hi)));
}
#endif

/* Drivers: transpose a block of rows to feature-major float32 (checking each value),
 * evaluate, apply the sigmoid. */
#define RQ_SIMD_BATCH(NAME, T, W, BLOCK, TARGET, LINK)                                \
  __attribute__((target(TARGET))) ptrdiff_t NAME(const T* X, size_t n_rows,            \
                                                 double* out) {                       \
    RQ_BUFFER(xT, RQ_NF * W);                                                         \
    if (!xT) return RQ_NO_MEMORY;                                                     \
    ptrdiff_t bad = -1;                                                               \
    double m[W];                                                                      \
    for (size_t i = 0; i < n_rows; i += W) {                                          \
      const size_t k = n_rows - i < W ? n_rows - i : W;                               \
      for (size_t r = 0; r < W; ++r) {                                                \
        const size_t row = i + (r < k ? r : k - 1);                                   \
        const T* x = X + row * RQ_NF;                                                 \
        for (int j = 0; j < RQ_NF; ++j) {                                             \
          if (RQ_BAD(x[j])) {                                                         \
            bad = (ptrdiff_t)(row * RQ_NF + j);                                       \
            goto done;                                                                \
          }                                                                           \
          xT[j * W + r] = (float)x[j];                                                \
        }                                                                             \
      }                                                                               \
      BLOCK(xT, m);                                                                   \
      for (size_t r = 0; r < k; ++r) out[i + r] = LINK(m[r] + rq_base);               \
    }                                                                                 \
  done:                                                                               \
    RQ_RELEASE(xT, RQ_NF * W);                                                        \
    return bad;                                                                       \
  }

#define RQ_SIMD_PREFIX(NAME, W, BLOCK, TARGET)                                        \
  __attribute__((target(TARGET))) void NAME(const double* prefix, size_t n_prefix,     \
                                            const double* rest, size_t n_rows,        \
                                            double* out) {                            \
    RQ_BUFFER(xT, RQ_NF * W);                                                         \
    if (!xT) { rq_fill_nan(out, n_rows); return; }                                    \
    double m[W];                                                                      \
    for (size_t j = 0; j < n_prefix; ++j)                                             \
      for (size_t r = 0; r < W; ++r) xT[j * W + r] = (float)prefix[j];                \
    for (size_t i = 0; i < n_rows; i += W) {                                          \
      const size_t k = n_rows - i < W ? n_rows - i : W;                               \
      for (size_t j = n_prefix; j < RQ_NF; ++j) {                                     \
        const double* col = rest + (j - n_prefix) * n_rows;                           \
        for (size_t r = 0; r < W; ++r) xT[j * W + r] = (float)col[i + (r < k ? r : k - 1)]; \
      }                                                                               \
      BLOCK(xT, m);                                                                   \
      for (size_t r = 0; r < k; ++r) out[i + r] = RQ_LINK(m[r] + rq_base);            \
    }                                                                                 \
    RQ_RELEASE(xT, RQ_NF * W);                                                        \
  }

RQ_SIMD_BATCH(rq_predict_f64_avx2, double, 8, rq_block_avx2, "avx2", RQ_LINK)
RQ_SIMD_BATCH(rq_predict_f32_avx2, float, 8, rq_block_avx2, "avx2", RQ_LINK)
RQ_SIMD_BATCH(rq_margin_f64_avx2, double, 8, rq_block_avx2, "avx2", RQ_MARGIN)
RQ_SIMD_BATCH(rq_margin_f32_avx2, float, 8, rq_block_avx2, "avx2", RQ_MARGIN)
RQ_SIMD_PREFIX(rq_predict_prefix_avx2, 8, rq_block_avx2, "avx2")

int rq_has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? 1 : 0;
}

#if RQ_HAVE_AVX512
RQ_SIMD_BATCH(rq_predict_f64_avx512, double, 16, rq_block_avx512, "avx512f", RQ_LINK)
RQ_SIMD_BATCH(rq_predict_f32_avx512, float, 16, rq_block_avx512, "avx512f", RQ_LINK)
RQ_SIMD_BATCH(rq_margin_f64_avx512, double, 16, rq_block_avx512, "avx512f", RQ_MARGIN)
RQ_SIMD_BATCH(rq_margin_f32_avx512, float, 16, rq_block_avx512, "avx512f", RQ_MARGIN)
RQ_SIMD_PREFIX(rq_predict_prefix_avx512, 16, rq_block_avx512, "avx512f")

int rq_has_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
}
#endif
#endif

/* Without the instruction set (another architecture, or trees too deep for the AVX-512
 * evaluator), the SIMD entry points exist and say so; Python never selects them. */
#if !defined(RQ_X86)
int rq_has_avx2(void) { return 0; }
ptrdiff_t rq_predict_f64_avx2(const double* X, size_t n_rows, double* out) {
  return rq_predict_f64_portable(X, n_rows, out);
}
ptrdiff_t rq_predict_f32_avx2(const float* X, size_t n_rows, double* out) {
  return rq_predict_f32_portable(X, n_rows, out);
}
void rq_predict_prefix_avx2(const double* prefix, size_t n_prefix, const double* rest,
                            size_t n_rows, double* out) {
  rq_predict_prefix_portable(prefix, n_prefix, rest, n_rows, out);
}
ptrdiff_t rq_margin_f64_avx2(const double* X, size_t n_rows, double* out) {
  return rq_margin_f64_portable(X, n_rows, out);
}
ptrdiff_t rq_margin_f32_avx2(const float* X, size_t n_rows, double* out) {
  return rq_margin_f32_portable(X, n_rows, out);
}
#endif
#if !defined(RQ_X86) || !RQ_HAVE_AVX512
int rq_has_avx512(void) { return 0; }
ptrdiff_t rq_predict_f64_avx512(const double* X, size_t n_rows, double* out) {
  return rq_predict_f64_portable(X, n_rows, out);
}
ptrdiff_t rq_predict_f32_avx512(const float* X, size_t n_rows, double* out) {
  return rq_predict_f32_portable(X, n_rows, out);
}
void rq_predict_prefix_avx512(const double* prefix, size_t n_prefix, const double* rest,
                              size_t n_rows, double* out) {
  rq_predict_prefix_portable(prefix, n_prefix, rest, n_rows, out);
}
ptrdiff_t rq_margin_f64_avx512(const double* X, size_t n_rows, double* out) {
  return rq_margin_f64_portable(X, n_rows, out);
}
ptrdiff_t rq_margin_f32_avx512(const float* X, size_t n_rows, double* out) {
  return rq_margin_f32_portable(X, n_rows, out);
}
#endif
