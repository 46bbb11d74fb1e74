/* reco_fast whole-catalog top-k by threshold cells.
 *
 * Appended to the harness of a `ranking` model with a flat forest of depth <= 6, in the same
 * translation unit as rs_candidate_rest (the feature specification's candidate kernel).
 * The index is built in numpy by reco_fast/serve/cells.py, which explains the method; in
 * short, for one page view:
 *
 *  1. every split on a session feature is decided once: a per-tree mask of reachable leaves;
 *  2. within one category every split on a category feature is decided too, and what is
 *     left depends on the price alone, through features monotone in it: each such split
 *     flips once along the category's products sorted by price, at a "cut" found by binary
 *     search over the catalog's distinct prices with the exact feature code;
 *  3. sweeping a category's prices from cut to cut gives "cells": runs of products whose
 *     every tree ends in the same leaf, so they score identically;
 *  4. categories are visited best upper bound first and skipped once their bound is below
 *     the k-th best cell; from each cell within EPS of the k-th best the k lowest catalog
 *     positions are returned.
 *
 * The caller scores the returned positions (and the session's sparse exceptions) with the
 * exact recommend kernel: this code only prunes, with a margin EPS far above the rounding
 * of its own sums, so it can never change a probability or an order. Any broken invariant
 * returns RS_CELLS_GIVE_UP and the caller scores the whole catalog instead.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* cdef: begin */
typedef struct {
  int32_t n_trees, n_nodes, n_leaves, sigmoid;
  const double* leaf;         /* [n_trees * n_leaves] */
  double base, eps;           /* eps: pruning margin, in output units */
  const uint64_t* go_left;    /* [n_trees * n_nodes]: leaves reachable if the node goes left */
  const uint64_t* go_right;
  int32_t n_snodes;           /* splits on session features */
  const int32_t* s_node;      /* global node t * n_nodes + n */
  const int32_t* s_feat;      /* index into the session row */
  const float* s_thr;
  int32_t n_cnodes;           /* splits on category features that read the session */
  const int32_t* c_node;
  const int32_t* c_feat;      /* index into the candidate block */
  const float* c_thr;
  int32_t n_pnodes;           /* splits on price features */
  const int32_t* p_node;
  const int32_t* p_feat;
  const float* p_thr;
  const int8_t* p_up;         /* 1: non-decreasing in price (left, then right); 0: decreasing */
  const int32_t* p_cut;       /* price rank where it flips; -1: reads the session, per request */
  const int32_t* tree_pstart; /* [n_trees + 1]: tree t's price nodes are */
  const int32_t* tree_pnodes; /* tree_pnodes[tree_pstart[t] .. tree_pstart[t + 1]] */
  int32_t n_candidate;        /* features in the candidate block */
  int32_t n_cat;              /* categories present in the catalog */
  const double* cat_code;     /* [n_cat] */
  const uint64_t* cat_static; /* [n_cat * n_trees]: static splits decided for the category */
  const int64_t* cat_start;   /* [n_cat + 1]: the category's slots */
  const int32_t* order;       /* [n_products]: positions by category, price rank, position */
  const int32_t* rank;        /* [n_products]: price rank of order[i] */
  const double* uprice;       /* [n_uprice]: distinct prices, ascending */
  int64_t n_uprice;
} rs_cells;

int64_t rs_cells_top(const rs_cells* ix, const double* row, const double* cat_codes,
                     const double* prices, const int64_t* skip_pos, size_t n_skip,
                     double threshold, size_t k, int64_t* out, size_t out_cap, int64_t* needed);
/* cdef: end */

#define RS_CELLS_NO_MEMORY (-1)
#define RS_CELLS_GIVE_UP (-2)
#define RS_CELLS_TOO_MANY (-3)

typedef struct {
  double value; /* the model's output for every product of the cell */
  int64_t start, end, avail;
} rs_cell;

static double rs_cells_link(const rs_cells* ix, double margin) {
  return ix->sigmoid ? 1.0 / (1.0 + exp(-margin)) : margin;
}

static int rs_cells_by_value(const void* a, const void* b) {
  const double x = ((const rs_cell*)a)->value, y = ((const rs_cell*)b)->value;
  return (x < y) - (x > y); /* descending */
}

typedef struct {
  double bound;
  int32_t cat;
} rs_cat_bound;

static int rs_cats_by_bound(const void* a, const void* b) {
  const rs_cat_bound* x = a;
  const rs_cat_bound* y = b;
  if (x->bound != y->bound) return (x->bound < y->bound) - (x->bound > y->bound);
  return (x->cat > y->cat) - (x->cat < y->cat);
}

static int rs_by_cut(const void* a, const void* b) {
  const int64_t x = *(const int64_t*)a, y = *(const int64_t*)b;
  return (x > y) - (x < y);
}

/* candidate block of a virtual product (category code, price), not viewed */
static void rs_cells_features(const double* row, double code, double price, double* rest) {
  const int64_t zero = 0;
  const uint8_t not_viewed = 0;
  rs_candidate_rest(row, &code, &price, &zero, 1, &not_viewed, rest);
}

/* cmask[t]: tree t's leaves reachable by category c's products (not viewed), given the
   session's masks smask: its static splits, then those reading the session */
static void rs_cells_category(const rs_cells* ix, const double* row, int32_t c,
                              const uint64_t* smask, uint64_t* cmask, double* rest) {
  const int32_t T = ix->n_trees, NN = ix->n_nodes;
  rs_cells_features(row, ix->cat_code[c], ix->uprice[0], rest);
  for (int32_t t = 0; t < T; ++t) cmask[t] = smask[t] & ix->cat_static[(size_t)c * T + t];
  for (int32_t i = 0; i < ix->n_cnodes; ++i) {
    const int32_t g = ix->c_node[i];
    const float x = (float)rest[ix->c_feat[i]];
    cmask[g / NN] &= x > ix->c_thr[i] ? ix->go_right[g] : ix->go_left[g];
  }
}

static double rs_max_leaf(const double* leaf, uint64_t mask) {
  double best = -INFINITY;
  while (mask) {
    const int l = __builtin_ctzll(mask);
    if (leaf[l] > best) best = leaf[l];
    mask &= mask - 1;
  }
  return best;
}

/* the k-th best output over the cells (counting available products), or -inf */
static double rs_kth(rs_cell* cells, size_t n_cells, size_t k) {
  qsort(cells, n_cells, sizeof(rs_cell), rs_cells_by_value);
  size_t seen = 0;
  for (size_t i = 0; i < n_cells; ++i) {
    seen += (size_t)cells[i].avail;
    if (seen >= k) return cells[i].value;
  }
  return -INFINITY;
}

static int rs_is_skipped(int64_t pos, const int64_t* skip_pos, size_t n_skip) {
  for (size_t i = 0; i < n_skip; ++i)
    if (skip_pos[i] == pos) return 1;
  return 0;
}

/* first index in the ascending a[lo..hi) not below x */
static int64_t rs_lower_f64(const double* a, int64_t lo, int64_t hi, double x) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* where catalog position p sits in ix->order (category, price rank, position) */
static int64_t rs_cells_slot(const rs_cells* ix, const double* cat_codes, const double* prices,
                             int64_t p) {
  const int64_t c = rs_lower_f64(ix->cat_code, 0, ix->n_cat, cat_codes[p]);
  const int32_t r = (int32_t)rs_lower_f64(ix->uprice, 0, ix->n_uprice, prices[p]);
  int64_t lo = ix->cat_start[c], hi = ix->cat_start[c + 1];
  while (lo < hi) { /* first slot at or past (r, p) */
    const int64_t mid = lo + (hi - lo) / 2;
    if (ix->rank[mid] < r || (ix->rank[mid] == r && ix->order[mid] < p)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* Positions worth scoring exactly, written to out; returns how many, or a negative code
 * (RS_CELLS_TOO_MANY sets *needed). cat_codes, prices: the catalog's arrays the index was
 * built from. skip_pos: products the caller scores or drops itself (viewed, excluded). */
int64_t rs_cells_top(const rs_cells* ix, const double* row, const double* cat_codes,
                     const double* prices, const int64_t* skip_pos, size_t n_skip,
                     double threshold, size_t k, int64_t* out, size_t out_cap, int64_t* needed) {
  const int32_t T = ix->n_trees, NN = ix->n_nodes, NL = ix->n_leaves, P = ix->n_pnodes;
  const uint64_t all = NL == 64 ? ~(uint64_t)0 : (((uint64_t)1 << NL) - 1);
  const double eps = ix->eps;
  int64_t result = 0;
  size_t n_cells = 0, cap_cells = 256;
  uint64_t* smask = malloc(sizeof(uint64_t) * (size_t)T * 3);
  double* val = malloc(sizeof(double) * ((size_t)T + (size_t)ix->n_candidate));
  int64_t* events = malloc(sizeof(int64_t) * ((size_t)P + 1) * 2);
  uint8_t* after = malloc((size_t)P + 1);
  rs_cat_bound* cats = malloc(sizeof(rs_cat_bound) * ((size_t)ix->n_cat + 1));
  rs_cell* cells = malloc(sizeof(rs_cell) * cap_cells);
  int64_t* best = malloc(sizeof(int64_t) * (k + 1));
  int64_t* skip_slot = malloc(sizeof(int64_t) * (n_skip + 1));
  if (!smask || !val || !events || !after || !cats || !cells || !best || !skip_slot) {
    result = RS_CELLS_NO_MEMORY;
    goto done;
  }
  uint64_t* cmask = smask + T;
  uint64_t* pmask = smask + 2 * (size_t)T;
  double* rest = val + T;
  int64_t* cut = events + (P + 1);

  for (size_t j = 0; j < n_skip; ++j) skip_slot[j] = rs_cells_slot(ix, cat_codes, prices, skip_pos[j]);

  /* 1. session splits */
  for (int32_t t = 0; t < T; ++t) smask[t] = all;
  for (int32_t i = 0; i < ix->n_snodes; ++i) {
    const int32_t g = ix->s_node[i];
    const float x = (float)row[ix->s_feat[i]];
    smask[g / NN] &= x > ix->s_thr[i] ? ix->go_right[g] : ix->go_left[g];
  }

  /* 2. price cuts: static ones from the index, the others searched. The index lists a
     feature's session-dependent nodes so that their cuts never decrease (thresholds
     ascending for a rising feature, descending for a falling one): each search gallops
     forward from the previous cut of the same feature. */
  int64_t floor_cut = 0;
  for (int32_t i = 0; i < P; ++i) {
    if (ix->p_cut[i] >= 0) {
      cut[i] = ix->p_cut[i];
      continue;
    }
    if (i > 0 && ix->p_cut[i - 1] < 0 && ix->p_feat[i - 1] == ix->p_feat[i]) {
      if (ix->p_thr[i - 1] == ix->p_thr[i]) { cut[i] = cut[i - 1]; continue; }
      floor_cut = cut[i - 1];
    } else {
      floor_cut = 0;
    }
    const int64_t n = ix->n_uprice;
    int64_t lo = floor_cut, step = 1, hi = n; /* every rank below lo does not flip */
    while (lo + step - 1 < n) {
      const int64_t probe = lo + step - 1;
      rs_cells_features(row, ix->cat_code[0], ix->uprice[probe], rest);
      const int left = (float)rest[ix->p_feat[i]] <= ix->p_thr[i];
      if (ix->p_up[i] ? !left : left) { hi = probe; break; }
      lo = probe + 1;
      step *= 2;
    }
    while (lo < hi) { /* the first flipping rank in [lo, hi] */
      const int64_t mid = lo + (hi - lo) / 2;
      rs_cells_features(row, ix->cat_code[0], ix->uprice[mid], rest);
      const int left = (float)rest[ix->p_feat[i]] <= ix->p_thr[i];
      if (ix->p_up[i] ? !left : left) hi = mid;
      else lo = mid + 1;
    }
    cut[i] = lo;
  }
  for (int32_t i = 0; i < P; ++i) events[i] = cut[i] * ((int64_t)P + 1) + i;
  qsort(events, (size_t)P, sizeof(int64_t), rs_by_cut);

  /* 3. per category: its splits, an upper bound */
  for (int32_t c = 0; c < ix->n_cat; ++c) {
    rs_cells_category(ix, row, c, smask, cmask, rest);
    double bound = ix->base;
    for (int32_t t = 0; t < T; ++t) {
      if (!cmask[t]) { result = RS_CELLS_GIVE_UP; goto done; }
      bound += rs_max_leaf(ix->leaf + (size_t)t * NL, cmask[t]);
    }
    cats[c].bound = rs_cells_link(ix, bound);
    cats[c].cat = c;
  }
  qsort(cats, (size_t)ix->n_cat, sizeof(rs_cat_bound), rs_cats_by_bound);

  /* 4. sweep categories, best bound first */
  double kth = -INFINITY;
  for (int32_t ci = 0; ci < ix->n_cat; ++ci) {
    const double floor_value = (kth > threshold ? kth : threshold) - eps;
    if (cats[ci].bound < floor_value) break;
    const int32_t c = cats[ci].cat;
    rs_cells_category(ix, row, c, smask, cmask, rest);
    memset(after, 0, (size_t)P);
    double score = ix->base;
    for (int32_t t = 0; t < T; ++t) {
      uint64_t m = cmask[t];
      for (int32_t q = ix->tree_pstart[t]; q < ix->tree_pstart[t + 1]; ++q) {
        const int32_t i = ix->tree_pnodes[q];
        const int go_right = ix->p_up[i] ? 0 : 1; /* before the cut */
        m &= go_right ? ix->go_right[ix->p_node[i]] : ix->go_left[ix->p_node[i]];
      }
      if (__builtin_popcountll(m) != 1) { result = RS_CELLS_GIVE_UP; goto done; }
      pmask[t] = m;
      val[t] = ix->leaf[(size_t)t * NL + __builtin_ctzll(m)];
      score += val[t];
    }
    int64_t s = ix->cat_start[c];
    const int64_t end = ix->cat_start[c + 1];
    int32_t e = 0;
    while (s < end) {
      const int64_t next = e < P ? events[e] / ((int64_t)P + 1) : INT64_MAX;
      int64_t b = end;
      if (next != INT64_MAX) { /* first slot whose rank reaches the cut */
        int64_t lo = s, hi = end;
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo) / 2;
          if (ix->rank[mid] >= next) hi = mid;
          else lo = mid + 1;
        }
        b = lo;
      }
      if (b > s) {
        const double value = rs_cells_link(ix, score);
        if (value >= threshold - eps) {
          int64_t avail = b - s;
          for (size_t j = 0; j < n_skip; ++j) avail -= skip_slot[j] >= s && skip_slot[j] < b;
          if (avail > 0) {
            if (n_cells == cap_cells) {
              rs_cell* grown = realloc(cells, sizeof(rs_cell) * cap_cells * 2);
              if (!grown) { result = RS_CELLS_NO_MEMORY; goto done; }
              cells = grown;
              cap_cells *= 2;
            }
            cells[n_cells++] = (rs_cell){value, s, b, avail};
          }
        }
        s = b;
      }
      if (e >= P) break;
      /* every split flipping at this cut */
      while (e < P && events[e] / ((int64_t)P + 1) == next) {
        const int32_t i = (int32_t)(events[e] % ((int64_t)P + 1));
        after[i] = 1;
        const int32_t t = ix->p_node[i] / NN;
        uint64_t m = cmask[t];
        for (int32_t q = ix->tree_pstart[t]; q < ix->tree_pstart[t + 1]; ++q) {
          const int32_t j = ix->tree_pnodes[q];
          const int go_right = ix->p_up[j] ? after[j] : !after[j];
          m &= go_right ? ix->go_right[ix->p_node[j]] : ix->go_left[ix->p_node[j]];
        }
        if (__builtin_popcountll(m) != 1) { result = RS_CELLS_GIVE_UP; goto done; }
        if (m != pmask[t]) {
          const double v = ix->leaf[(size_t)t * NL + __builtin_ctzll(m)];
          score += v - val[t];
          val[t] = v;
          pmask[t] = m;
        }
        ++e;
      }
    }
    kth = rs_kth(cells, n_cells, k);
  }

  /* 5. the k lowest positions of every cell within eps of the k-th best (kth and the
     cells' order are those of the last category swept; none swept: no cells) */
  size_t n_out = 0, n_need = 0;
  for (size_t ci = 0; ci < n_cells && cells[ci].value >= kth - eps; ++ci) {
    size_t count = 0;
    for (int64_t sl = cells[ci].start; sl < cells[ci].end; ++sl) {
      const int64_t pos = ix->order[sl];
      if (count == k && pos >= best[k - 1]) continue;
      if (n_skip && rs_is_skipped(pos, skip_pos, n_skip)) continue;
      size_t j = count < k ? count++ : k - 1;
      while (j > 0 && best[j - 1] > pos) { best[j] = best[j - 1]; --j; }
      best[j] = pos;
    }
    for (size_t j = 0; j < count; ++j) {
      if (n_out < out_cap) out[n_out++] = best[j];
      ++n_need;
    }
  }
  *needed = (int64_t)n_need;
  result = n_need > out_cap ? RS_CELLS_TOO_MANY : (int64_t)n_out;
done:
  free(smask);
  free(val);
  free(events);
  free(after);
  free(cats);
  free(cells);
  free(best);
  free(skip_slot);
  return result;
}
