/* reco_fast flat evaluator: complete trees, branch-free, float32 compares.
 * Generated from treelite's model by reco_fast._codegen; see reco_fast/_ir.py
 * for why float32 compares with thresholds rounded down are exact. */
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <float.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RQ_X86 1
#endif

#define RQ_NF @N_FEATURES@
#define RQ_NT @N_TREES@
#define RQ_D @DEPTH@
#define RQ_NN ((1 << RQ_D) - 1)
#define RQ_NL (1 << RQ_D)
#define RQ_BLOCK 8

static const int32_t rq_feature[RQ_NT * RQ_NN] = {@FEATURES@};
static const float rq_threshold[RQ_NT * RQ_NN] = {@THRESHOLDS@};
static const double rq_leaf[RQ_NT * RQ_NL] = {@LEAVES@};
static const double rq_base = @BASE@;

static inline double rq_sigmoid(double margin) { return 1.0 / (1.0 + exp(-margin)); }

/* ---- portable: any CPU ---------------------------------------------------------------- */
/* Every flat path sums tree t into group t % 4 and returns (g0 + g1) + (g2 + g3) + base,
 * the order the AVX2 kernel's accumulators impose, so all paths agree bit for bit. */
static double rq_margin_row(const float* x) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (int t = 0; t < RQ_NT; ++t) {
    const int32_t* f = rq_feature + t * RQ_NN;
    const float* th = rq_threshold + t * RQ_NN;
    unsigned idx = 0;
    for (int l = 0; l < RQ_D; ++l) {
      const unsigned node = (1u << l) - 1u + idx;
      idx = 2u * idx + (unsigned)(x[f[node]] > th[node]);
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
        idx[r] = 2u * idx[r] + (unsigned)(x[r * RQ_NF + f[node]] > th[node]);
      }
    }
    for (int r = 0; r < RQ_BLOCK; ++r) acc[t % 4][r] += rq_leaf[t * RQ_NL + idx[r]];
  }
  for (int r = 0; r < RQ_BLOCK; ++r)
    out[r] = ((acc[0][r] + acc[1][r]) + (acc[2][r] + acc[3][r])) + rq_base;
}

double rq_predict_one(const double* x) {
  float xf[RQ_NF];
  for (int j = 0; j < RQ_NF; ++j) xf[j] = (float)x[j];
  return rq_sigmoid(rq_margin_row(xf));
}

/* Batch entry points check every value as they convert it (finite and within float32's
 * range) and return the flat index of the first bad one, or -1: validation costs no
 * extra pass over the input. */
#define RQ_BAD(v) (!(fabs((double)(v)) <= (double)FLT_MAX))

#define RQ_PORTABLE(NAME, T)                                                          \
  ptrdiff_t NAME(const T* X, size_t n_rows, double* out) {                            \
    float xb[RQ_BLOCK * RQ_NF];                                                       \
    double m[RQ_BLOCK];                                                               \
    for (size_t i = 0; i < n_rows; i += RQ_BLOCK) {                                   \
      const size_t k = n_rows - i < RQ_BLOCK ? n_rows - i : RQ_BLOCK;                 \
      for (size_t r = 0; r < RQ_BLOCK; ++r) {                                         \
        const T* x = X + (i + (r < k ? r : k - 1)) * RQ_NF;                           \
        for (int j = 0; j < RQ_NF; ++j) {                                             \
          if (RQ_BAD(x[j])) return (ptrdiff_t)((i + (r < k ? r : k - 1)) * RQ_NF + j); \
          xb[r * RQ_NF + j] = (float)x[j];                                            \
        }                                                                             \
      }                                                                               \
      rq_margin_block(xb, m);                                                         \
      for (size_t r = 0; r < k; ++r) out[i + r] = rq_sigmoid(m[r]);                   \
    }                                                                                 \
    return -1;                                                                        \
  }
RQ_PORTABLE(rq_predict_f64_portable, double)
RQ_PORTABLE(rq_predict_f32_portable, float)

/* Rows that share their first n_prefix features (one session against many products):
 * the shared part is converted once, only the rest is read per row. */
void rq_predict_prefix_portable(const double* prefix, size_t n_prefix, const double* rest,
                                size_t n_rows, double* out) {
  float xb[RQ_BLOCK * RQ_NF];
  double m[RQ_BLOCK];
  const size_t n_rest = RQ_NF - n_prefix;
  for (size_t r = 0; r < RQ_BLOCK; ++r)
    for (size_t j = 0; j < n_prefix; ++j) xb[r * RQ_NF + j] = (float)prefix[j];
  for (size_t i = 0; i < n_rows; i += RQ_BLOCK) {
    const size_t k = n_rows - i < RQ_BLOCK ? n_rows - i : RQ_BLOCK;
    for (size_t r = 0; r < RQ_BLOCK; ++r) {
      const double* x = rest + (i + (r < k ? r : k - 1)) * n_rest;
      for (size_t j = 0; j < n_rest; ++j) xb[r * RQ_NF + n_prefix + j] = (float)x[j];
    }
    rq_margin_block(xb, m);
    for (size_t r = 0; r < k; ++r) out[i + r] = rq_sigmoid(m[r]);
  }
}

/* ---- AVX2: 8 rows per register, every node compared, the path picked by blends --------- */
#ifdef RQ_X86
#define RQ_GT(F, T) _mm256_cmp_ps(_mm256_load_ps(xT + 8 * (F)), _mm256_set1_ps(T), _CMP_GT_OQ)
#define RQ_SEL(A, B, M) _mm256_blendv_ps((A), (B), (M))
#define RQ_Z _mm256_setzero_ps()
#define RQ_BIT(M, W) _mm256_and_si256(_mm256_castps_si256(M), _mm256_set1_epi32(W))

/* One straight-line block per tree, constants inlined; four accumulator pairs
 * (tree t adds into pair t % 4) so the additions do not serialise. */
__attribute__((target("avx2"))) static void rq_block_avx2(const float* xT /* [RQ_NF][8] */,
                                                           double* out) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd(),
          a3 = _mm256_setzero_pd(), a4 = _mm256_setzero_pd(), a5 = _mm256_setzero_pd(),
          a6 = _mm256_setzero_pd(), a7 = _mm256_setzero_pd();
@AVX2_TREES@
  a0 = _mm256_add_pd(_mm256_add_pd(a0, a2), _mm256_add_pd(a4, a6));
  a1 = _mm256_add_pd(_mm256_add_pd(a1, a3), _mm256_add_pd(a5, a7));
  /* (g0 + g1) + (g2 + g3): a0/a2/a4/a6 hold groups 0..3 of rows 0-3 */
  _mm256_storeu_pd(out, a0);
  _mm256_storeu_pd(out + 4, a1);
}

#define RQ_AVX2(NAME, T)                                                              \
  __attribute__((target("avx2"))) ptrdiff_t NAME(const T* X, size_t n_rows,           \
                                                 double* out) {                       \
    float xT[RQ_NF * 8] __attribute__((aligned(32)));                                 \
    double m[8];                                                                      \
    for (size_t i = 0; i < n_rows; i += 8) {                                          \
      const size_t k = n_rows - i < 8 ? n_rows - i : 8;                               \
      for (size_t r = 0; r < 8; ++r) {                                                \
        const T* x = X + (i + (r < k ? r : k - 1)) * RQ_NF;                           \
        for (int j = 0; j < RQ_NF; ++j) {                                             \
          if (RQ_BAD(x[j])) return (ptrdiff_t)((i + (r < k ? r : k - 1)) * RQ_NF + j); \
          xT[j * 8 + r] = (float)x[j];                                                \
        }                                                                             \
      }                                                                               \
      rq_block_avx2(xT, m);                                                           \
      for (size_t r = 0; r < k; ++r) out[i + r] = rq_sigmoid(m[r] + rq_base);         \
    }                                                                                 \
    return -1;                                                                        \
  }
RQ_AVX2(rq_predict_f64_avx2, double)
RQ_AVX2(rq_predict_f32_avx2, float)

__attribute__((target("avx2"))) void rq_predict_prefix_avx2(const double* prefix,
                                                            size_t n_prefix, const double* rest,
                                                            size_t n_rows, double* out) {
  float xT[RQ_NF * 8] __attribute__((aligned(32)));
  double m[8];
  const size_t n_rest = RQ_NF - n_prefix;
  for (size_t j = 0; j < n_prefix; ++j)
    for (size_t r = 0; r < 8; ++r) xT[j * 8 + r] = (float)prefix[j];
  for (size_t i = 0; i < n_rows; i += 8) {
    const size_t k = n_rows - i < 8 ? n_rows - i : 8;
    for (size_t r = 0; r < 8; ++r) {
      const double* x = rest + (i + (r < k ? r : k - 1)) * n_rest;
      for (size_t j = 0; j < n_rest; ++j) xT[(n_prefix + j) * 8 + r] = (float)x[j];
    }
    rq_block_avx2(xT, m);
    for (size_t r = 0; r < k; ++r) out[i + r] = rq_sigmoid(m[r] + rq_base);
  }
}

int rq_has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? 1 : 0;
}
#else
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
int rq_has_avx2(void) { return 0; }
#endif
