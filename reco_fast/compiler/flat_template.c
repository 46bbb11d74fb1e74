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
#define RQ_HAVE_AVX512 @HAVE_AVX512@

/* compares in float32: an input reads as scikit-learn rounds it */
typedef float rq_cmp;
#define RQ_READ(v) ((float)(v))
#define RQ_RANGE ((double)FLT_MAX)
#define RQ_SPARSE 0
#define RQ_ROW_BY_ROW 0 /* every block through the kernels (rq_margin_row reads doubles) */

static const int32_t rq_feature[RQ_NT * RQ_NN] = {@FEATURES@};
static const float rq_threshold[RQ_NT * RQ_NN] = {@THRESHOLDS@};
static const double rq_leaf[RQ_NT * RQ_NL] = {@LEAVES@};
static const double rq_base = @BASE@;

/* 1: NaN is a valid input, sent left or right as each node learned */
#define RQ_NAN_ROUTED @NAN_ROUTED@
#if RQ_NAN_ROUTED
static const uint8_t rq_nan_right[RQ_NT * RQ_NN] = {@NAN_RIGHT@};
#endif

/* the model's output from its margin: sigmoid (a probability) or identity (a score) */
#define RQ_LINK(M) @LINK@

/* ---- portable: any CPU ----------------------------------------------------------------
 * the complete-tree kernels, rq_predict_one and the *_portable batch entry points */
#include "flat_common.h"

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
/* the index of V's lowest set bit, per 32-bit lane: its float's exponent (W = 256, 512) */
#define RQ_LOWEST(W, V)                                                                  \
  _mm##W##_sub_epi32(                                                                    \
      _mm##W##_and_si##W(                                                                \
          _mm##W##_srli_epi32(_mm##W##_castps_si##W(_mm##W##_cvtepi32_ps(_mm##W##_and_si##W( \
                                  (V), _mm##W##_sub_epi32(_mm##W##_setzero_si##W(), (V))))), 23), \
          _mm##W##_set1_epi32(0xFF)),                                                    \
      _mm##W##_set1_epi32(127))
#define RQ8_LOWEST(V) RQ_LOWEST(256, V)
#define RQ8_ADD(G, TREE, I) \
  G##lo = _mm256_add_pd(G##lo, _mm256_i32gather_pd(rq_leaf + (TREE) * RQ_NL, \
                                                   _mm256_castsi256_si128(I), 8)); \
  G##hi = _mm256_add_pd(G##hi, _mm256_i32gather_pd(rq_leaf + (TREE) * RQ_NL, \
                                                   _mm256_extracti128_si256(I, 1), 8))

__attribute__((target("avx2"))) static void rq_block_avx2(const float* xT /* [RQ_NF][8] */,
                                                           double* out) {
  RQ_GROUPS(256);
@AVX2_TREES@
  RQ_GROUPS_SUM(256);
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
#define RQ16_LOWEST(V) RQ_LOWEST(512, V)
#define RQ16_ADD(G, TREE, I) \
  G##lo = _mm512_add_pd(G##lo, _mm512_i32gather_pd(_mm512_castsi512_si256(I), \
                                                   rq_leaf + (TREE) * RQ_NL, 8)); \
  G##hi = _mm512_add_pd(G##hi, _mm512_i32gather_pd(_mm512_extracti64x4_epi64(I, 1), \
                                                   rq_leaf + (TREE) * RQ_NL, 8))

__attribute__((target("avx512f"))) static void rq_block_avx512(
    const float* xT /* [RQ_NF][16] */, double* out) {
  RQ_GROUPS(512);
@AVX512_TREES@
  RQ_GROUPS_SUM(512);
}
#endif

/* Drivers: rows transposed to feature-major float32 (each value checked as it is read),
 * evaluated, linked. */
RQ_ENTRY_POINTS(avx2, __attribute__((target("avx2"))), 8, 1, rq_block_avx2)

int rq_has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? 1 : 0;
}

#if RQ_HAVE_AVX512
RQ_ENTRY_POINTS(avx512, __attribute__((target("avx512f"))), 16, 1, rq_block_avx512)

int rq_has_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
}
#endif
#endif

/* Without the instruction set (another architecture, or trees too deep for the AVX-512
 * evaluator), the SIMD entry points exist and say so; Python never selects them. */
#if !defined(RQ_X86)
RQ_FORWARD(avx2)
#endif
#if !defined(RQ_X86) || !RQ_HAVE_AVX512
RQ_FORWARD(avx512)
#endif
