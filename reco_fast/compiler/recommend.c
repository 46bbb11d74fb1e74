/* reco_fast whole-catalog recommend, one session in one call (see reco_fast/serve/recommend.py).
 * Appended to a `ranking` artifact's harness after the feature specification's candidate
 * kernel (rs_candidate_rest); @N_SESSION@ and @N_CANDIDATE@ are the specification's block
 * sizes, filled by reco_fast/compiler/codegen.py::session_harness. */

/* The k best rows at or above the threshold, by probability then position: an insertion
   into a k-long list, cheaper than any sort for the few recommendations a page shows. */
static size_t rs_top_k(const double* p, size_t n, double threshold, size_t k, int64_t* top) {
  size_t count = 0;
  for (size_t i = 0; i < n && k > 0; ++i) {
    if (!(p[i] >= threshold)) continue;
    if (count == k && !(p[i] > p[top[k - 1]])) continue;
    size_t j = count < k ? count++ : k - 1;
    while (j > 0 && p[top[j - 1]] < p[i]) { top[j] = top[j - 1]; --j; }
    top[j] = (int64_t)i;
  }
  return count;
}

#include <stdlib.h>
#include <string.h>
typedef void (*rs_prefix_fn)(const double*, size_t, const double*, size_t, double*);

static int rs_cmp_i64(const void* a, const void* b) {
  const int64_t x = *(const int64_t*)a, y = *(const int64_t*)b;
  return (x > y) - (x < y);
}

/* 1 if p is in the sorted array s[0..n) */
static int rs_member(const int64_t* s, size_t n, int64_t p) {
  return n > 0 && bsearch(&p, s, n, sizeof(int64_t), rs_cmp_i64) != NULL;
}

/* One session against the catalog (or the caller's candidates, deduplicated and
   validated by the caller), in one call: drop excluded products, build the candidate
   features, score, keep the top k. Returns how many were kept, or -1 if out of memory.
   With candidates, the work and memory are proportional to them, not to the catalog:
   their category codes, prices and viewed flags are gathered into local arrays. */
static int64_t rs_recommend(const double* row, const double* cat_codes, const double* prices,
                            size_t n_catalog, const int64_t* viewed_pos, size_t n_viewed,
                            const int64_t* drop_pos, size_t n_drop, const int64_t* cand,
                            size_t n_cand, double threshold, size_t k, int64_t* top_pos,
                            double* top_p, rs_prefix_fn prefix) {
  const size_t m_max = cand ? n_cand : n_catalog;
  const size_t n_flags = cand ? m_max : n_catalog;
  uint8_t* flags = calloc(n_flags ? n_flags : 1, 2);
  int64_t* sorted = malloc(((n_viewed + n_drop) ? (n_viewed + n_drop) : 1) * sizeof(int64_t));
  int64_t* kept = malloc((m_max ? m_max : 1) *
                         (3 * sizeof(int64_t) + (@N_CANDIDATE@ + 3) * sizeof(double)));
  if (!flags || !kept || !sorted) { free(flags); free(kept); free(sorted); return -1; }
  uint8_t* viewed = flags;
  uint8_t* dropped = flags + n_flags;
  int64_t* order = kept + m_max;
  int64_t* local = order + m_max;
  double* rest = (double*)(local + m_max);
  double* proba = rest + @N_CANDIDATE@ * m_max;
  double* local_codes = proba + m_max;
  double* local_prices = local_codes + m_max;
  size_t m = 0;
  const double* codes = cat_codes;
  const double* price = prices;
  const int64_t* rows = kept;
  if (!cand) {
    for (size_t i = 0; i < n_viewed; ++i) viewed[viewed_pos[i]] = 1;
    for (size_t i = 0; i < n_drop; ++i) dropped[drop_pos[i]] = 1;
    for (size_t i = 0; i < n_catalog; ++i)
      if (!dropped[i]) kept[m++] = (int64_t)i;
  } else {
    int64_t* sv = sorted;
    int64_t* sd = sorted + n_viewed;
    memcpy(sv, viewed_pos, n_viewed * sizeof(int64_t));
    memcpy(sd, drop_pos, n_drop * sizeof(int64_t));
    qsort(sv, n_viewed, sizeof(int64_t), rs_cmp_i64);
    qsort(sd, n_drop, sizeof(int64_t), rs_cmp_i64);
    for (size_t i = 0; i < n_cand; ++i) {
      const int64_t p = cand[i];
      if (rs_member(sd, n_drop, p)) continue;
      kept[m] = p;
      local[m] = (int64_t)m;
      local_codes[m] = cat_codes[p];
      local_prices[m] = prices[p];
      viewed[m] = (uint8_t)rs_member(sv, n_viewed, p);
      ++m;
    }
    codes = local_codes;
    price = local_prices;
    rows = local;
  }
  size_t count = 0;
  if (m > 0) {
    rs_candidate_rest(row, codes, price, rows, m, viewed, rest);
    prefix(row, @N_SESSION@, rest, m, proba);
    count = rs_top_k(proba, m, threshold, k, order);
    for (size_t j = 0; j < count; ++j) {
      top_pos[j] = kept[order[j]];
      top_p[j] = proba[order[j]];
    }
  }
  free(flags);
  free(kept);
  free(sorted);
  return (int64_t)count;
}
