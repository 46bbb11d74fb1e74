/* The harness's entry points (defined in harness.c). This file is both included by
   harness.c and handed to cffi as its cdef (reco_fast/compiler/codegen.py), so the
   declarations the Python side calls are the ones the C compiler checks the definitions
   against. cffi's cdef takes no preprocessor lines: declarations and comments only. */
int rf_num_feature(void);
double rf_predict_one(const double* x);
void rf_predict_prefix(const double* prefix, size_t n_prefix, const double* rest,
                       size_t n_rows, double* out);
ptrdiff_t rf_predict_f64(const double* X, size_t n_rows, double* out);
ptrdiff_t rf_predict_f32(const float* X, size_t n_rows, double* out);
double rf_margin_one(const double* x);
ptrdiff_t rf_margin_f64(const double* X, size_t n_rows, double* out);
ptrdiff_t rf_margin_f32(const float* X, size_t n_rows, double* out);
