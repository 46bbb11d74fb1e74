/* The harness reco_fast puts around tl2cgen's predict(): the entry points a service
   calls (one row, batches of float64 or float32 rows, raw margins, a shared prefix).
   Filled by reco_fast/compiler/codegen.py (generate_c: every @NAME@ is replaced) and
   built by cffi with harness.h, which declares these entry points and is also cffi's
   cdef: the compiler checks every definition here against its declaration. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <float.h>
#include "header.h"
#include "harness.h"

#define RF_NFEAT @N_FEATURES@
/* 1: every input is rounded to float32 before the trees see it (scikit-learn's
   GradientBoosting*, XGBoost); 0: compared as float64 (HistGradientBoosting*, LightGBM). */
#define RF_F32_INPUT @F32_INPUT@
/* 1: NaN is a valid input, sent where the model learned to send missing values
   (tl2cgen's missing test reads isnan(fvalue): see route_missing). 0: refused. */
#define RF_NAN_ROUTED @NAN_ROUTED@
/* |x| <= RF_ZERO_SNAP reads as 0 (LightGBM drops such values from a dense row as zeros);
   RF_ZERO_SNAP 0.0: off */
#define RF_ZERO_SNAP @ZERO_SNAP@
/* what tl2cgen's predict() accumulates into: float (XGBoost) or double */
typedef @RESULT_T@ rf_result_t;
/* The row tl2cgen reads (RF_NFEAT entries) lives on the stack only while it fits
   RF_STACK_MAX bytes; a wider model's row comes from the heap, once per call. No stack
   frame grows with the model, so any model runs in a thread with a small stack. */
#define RF_STACK_MAX 4096
enum { RF_SMALL = RF_NFEAT * sizeof(union Entry) <= RF_STACK_MAX };
#define RF_ROW_BUFFER(NAME) \
  union Entry NAME##_stack[RF_SMALL ? RF_NFEAT : 1]; \
  union Entry* NAME = RF_SMALL ? NAME##_stack : malloc(RF_NFEAT * sizeof(union Entry))
#define RF_ROW_RELEASE(NAME) do { if (!RF_SMALL) free(NAME); } while (0)
/* what a batch entry point returns when it cannot allocate its buffer */
#define RF_NO_MEMORY ((ptrdiff_t)-2)

/* A value the model cannot take: not finite (NaN allowed when routed) or, for float32
   inputs, beyond float32's range. */
static inline int rf_bad(double v) {
#if RF_NAN_ROUTED
  if (v != v) return 0;
#endif
#if RF_F32_INPUT
  return !(fabs(v) <= (double)FLT_MAX);
#else
  return !(fabs(v) <= DBL_MAX);
#endif
}

static inline void rf_set(union Entry* e, double v) {
  if (RF_ZERO_SNAP > 0.0 && fabs(v) <= RF_ZERO_SNAP) v = 0.0;
#if RF_F32_INPUT
  /* volatile: GCC 12 -O2 drops this (double)(float) round trip when RF_NFEAT is 2 or 3
     (SLP vectorizer), skipping the float32 rounding scikit-learn applies */
  volatile float f = (float)v;
  e->fvalue = f;
#else
  e->fvalue = v;
#endif
}

/* margin = 1: tl2cgen's raw sum (base score included, no postprocessor) */
static inline double rf_eval(union Entry* data, int margin) {
  rf_result_t result = 0;
  predict(data, margin, &result);
  return (double)result;
}

static inline double rf_row_f64(const double* x, union Entry* data, int margin) {
  for (int j = 0; j < RF_NFEAT; ++j) rf_set(&data[j], x[j]);
  return rf_eval(data, margin);
}

int rf_num_feature(void) { return RF_NFEAT; }

/* NaN if out of memory (only for models wider than RF_STACK_MAX allows): NaN never
   passes a golden or verification check and is never a probability. */
static double rf_one(const double* x, int margin) {
  RF_ROW_BUFFER(data);
  if (!data) return NAN;
  const double p = rf_row_f64(x, data, margin);
  RF_ROW_RELEASE(data);
  return p;
}
double rf_predict_one(const double* x) { return rf_one(x, 0); }
double rf_margin_one(const double* x) { return rf_one(x, 1); }

/* Batch entry points return the flat index of the first value the model cannot take
   (rf_bad), or -1; they stop there. RF_NO_MEMORY: nothing scored. */
#define RF_BATCH(NAME, T, MARGIN)                                                   \
  ptrdiff_t NAME(const T* X, size_t n_rows, double* out) {                          \
    RF_ROW_BUFFER(data);                                                            \
    if (!data) return RF_NO_MEMORY;                                                 \
    ptrdiff_t bad = -1;                                                             \
    for (size_t i = 0; i < n_rows && bad < 0; ++i) {                                \
      const T* x = X + i * RF_NFEAT;                                                \
      for (int j = 0; j < RF_NFEAT; ++j) {                                          \
        if (rf_bad((double)x[j])) { bad = (ptrdiff_t)(i * RF_NFEAT + j); break; }   \
        rf_set(&data[j], (double)x[j]);                                             \
      }                                                                             \
      if (bad < 0) out[i] = rf_eval(data, MARGIN);                                  \
    }                                                                               \
    RF_ROW_RELEASE(data);                                                           \
    return bad;                                                                     \
  }
RF_BATCH(rf_predict_f64, double, 0)
RF_BATCH(rf_predict_f32, float, 0)
RF_BATCH(rf_margin_f64, double, 1)
RF_BATCH(rf_margin_f32, float, 1)

/* Out of memory: every out[i] is NaN (never at or above a threshold). */
void rf_predict_prefix(const double* prefix, size_t n_prefix, const double* rest,
                       size_t n_rows, double* out) {
  /* rest is feature-major: rest[j * n_rows + i] */
  RF_ROW_BUFFER(data);
  if (!data) {
    for (size_t i = 0; i < n_rows; ++i) out[i] = NAN;
    return;
  }
  for (size_t j = 0; j < n_prefix; ++j) rf_set(&data[j], prefix[j]);
  for (size_t i = 0; i < n_rows; ++i) {
    for (size_t j = n_prefix; j < RF_NFEAT; ++j)
      rf_set(&data[j], rest[(j - n_prefix) * n_rows + i]);
    out[i] = rf_eval(data, 0);
  }
  RF_ROW_RELEASE(data);
}
