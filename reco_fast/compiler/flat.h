/* The flat evaluator's entry points (defined in flat.c, generated from flat_template.c).
   Included by flat.c and by the harness, and handed to cffi as its cdef
   (reco_fast/compiler/codegen.py): one list of declarations, checked by the C compiler
   against the definitions. cffi's cdef takes no preprocessor lines: declarations and
   comments only. */
int rq_has_avx2(void);
double rq_predict_one(const double* x);
ptrdiff_t rq_predict_f64_portable(const double* X, size_t n_rows, double* out);
ptrdiff_t rq_predict_f32_portable(const float* X, size_t n_rows, double* out);
ptrdiff_t rq_predict_f64_avx2(const double* X, size_t n_rows, double* out);
ptrdiff_t rq_predict_f32_avx2(const float* X, size_t n_rows, double* out);
void rq_predict_prefix_portable(const double* prefix, size_t n_prefix, const double* rest,
                                size_t n_rows, double* out);
void rq_predict_prefix_avx2(const double* prefix, size_t n_prefix, const double* rest,
                            size_t n_rows, double* out);
int rq_has_avx512(void);
ptrdiff_t rq_predict_f64_avx512(const double* X, size_t n_rows, double* out);
ptrdiff_t rq_predict_f32_avx512(const float* X, size_t n_rows, double* out);
void rq_predict_prefix_avx512(const double* prefix, size_t n_prefix, const double* rest,
                              size_t n_rows, double* out);
double rq_margin_one(const double* x);
ptrdiff_t rq_margin_f64_portable(const double* X, size_t n_rows, double* out);
ptrdiff_t rq_margin_f32_portable(const float* X, size_t n_rows, double* out);
ptrdiff_t rq_margin_f64_avx2(const double* X, size_t n_rows, double* out);
ptrdiff_t rq_margin_f32_avx2(const float* X, size_t n_rows, double* out);
ptrdiff_t rq_margin_f64_avx512(const double* X, size_t n_rows, double* out);
ptrdiff_t rq_margin_f32_avx512(const float* X, size_t n_rows, double* out);
/* the forest itself (complete trees: node features, float32 thresholds rounded down,
   leaves; shape = n_trees, depth, n_features, 1 if the link is the sigmoid), read by the
   whole-catalog top-k (reco_fast/serve/cells.py) */
void rq_forest(const int32_t** feature, const float** threshold, const double** leaf,
               double* base, int32_t* shape);
