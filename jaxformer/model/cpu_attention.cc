// Fused softmax(QK^T / sqrt(H)) V for XLA:CPU, forward and backward, as XLA FFI handlers
// (jaxformer/model/cpu_attention.py builds, loads and differentiates it; model.attention_impl=cpp).
//
// Why it exists: XLA:CPU runs attention's batched [T, H] x [H, S] products on one core (the batch loop is not
// split across threads) and writes every score and probability tensor to memory between them. Here one task is
// one (batch row, KV head): its queries, in blocks of up to BQ rows (a block ends where a packed document does),
// go through scores -> softmax -> P V with the block's scores in cache, and the tasks are spread over all cores.
//
// Layouts are the model's own: q, o, dq [B, T, N, H]; k, v, dk, dv [B, S, G, H] (N = G x R query heads, query
// head n reads KV head n / R); lse [B, N, T] (log-sum-exp of each row's scaled scores, saved for the backward).
// Query i sees key j when j <= i (causal), |i - j| < window (a sliding window; 0 = none) and both carry the same
// segment id (ids [B, S]: packed documents, or padding as a segment of its own; all equal: no documents), the
// masks of the model's `blocked` XLA kernel. A query always sees itself, so no row is ever fully masked. Causal,
// windowed or segmented attention needs S == T (training); the Python side checks.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int VL = 16;  // floats per vector register
constexpr int MR = 6;   // rows per register tile
constexpr int NV = 4;   // vectors per register tile row: 6 x 4 accumulators + 4 B vectors fit 32 registers
#else
constexpr int VL = 8;
constexpr int MR = 4;
constexpr int NV = 2;   // 16 registers: 4 x 2 accumulators + 2 B vectors
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));  // for unaligned loads and stores
typedef int32_t vi __attribute__((vector_size(VL * 4)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
inline vf splat(float x) { return vf{} + x; }

// C[i, j] (+)= sum_k A(i, k) B[k, j] for one tile of ROWS x (V * VL); A(i, k) = a[i * ars + k * acs].
template <int ROWS, int V>
inline void tile(long kk, const float* a, long ars, long acs, const float* b, long ldb, float* c, long ldc,
                 bool accumulate) {
  vf sum[ROWS][V];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) sum[r][v] = accumulate ? load(c + r * ldc + v * VL) : vf{};
  for (long k = 0; k < kk; ++k) {
    vf bv[V];
    for (int v = 0; v < V; ++v) bv[v] = load(b + k * ldb + v * VL);
    for (int r = 0; r < ROWS; ++r) {
      vf av = splat(a[r * ars + k * acs]);
      for (int v = 0; v < V; ++v) sum[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < V; ++v) store(c + r * ldc + v * VL, sum[r][v]);
}

template <int V>
inline void panel(long m, long kk, const float* a, long ars, long acs, const float* b, long ldb, float* c, long ldc,
                  bool accumulate) {
  long i = 0;
  for (; i + MR <= m; i += MR) tile<MR, V>(kk, a + i * ars, ars, acs, b, ldb, c + i * ldc, ldc, accumulate);
  // rows left over (64 = 6 x 10 + 4): as few tiles as possible, each row alone would reload B per row
  for (; i + 4 <= m; i += 4) tile<4, V>(kk, a + i * ars, ars, acs, b, ldb, c + i * ldc, ldc, accumulate);
  for (; i + 2 <= m; i += 2) tile<2, V>(kk, a + i * ars, ars, acs, b, ldb, c + i * ldc, ldc, accumulate);
  for (; i < m; ++i) tile<1, V>(kk, a + i * ars, ars, acs, b, ldb, c + i * ldc, ldc, accumulate);
}

// C[m, n] (+)= A[m, k] B[k, n]; B and C rows are contiguous (strides ldb, ldc), A is read through strides.
void gemm(long m, long n, long kk, const float* a, long ars, long acs, const float* b, long ldb, float* c,
          long ldc, bool accumulate) {
  long j = 0;
  for (; j + NV * VL <= n; j += NV * VL) panel<NV>(m, kk, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
  for (; j + VL <= n; j += VL) panel<1>(m, kk, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
  for (; j < n; ++j)
    for (long i = 0; i < m; ++i) {
      float s = accumulate ? c[i * ldc + j] : 0.0f;
      for (long k = 0; k < kk; ++k) s += a[i * ars + k * acs] * b[k * ldb + j];
      c[i * ldc + j] = s;
    }
}

// exp(x) for x <= 0 (scores minus their row maximum): 2^n e^r with |r| <= ln2 / 2, degree-6 Taylor polynomial
// for e^r (relative error below 2e-7), 2^n put straight into the exponent bits. Inputs below -87 give ~1e-38.
inline vf exp_nonpositive(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  vf t = x * splat(1.44269504f) + magic;
  vf n = t - magic;
  vf r = x - n * splat(0.693145752f) - n * splat(1.42860677e-6f);
  vf p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// row[0:len] = exp(row[0:len] * mul - sub), row[len:width] = 0; returns the sum of the exponentials.
float exp_row(float* row, long len, long width, float mul, float sub) {
  vf acc = vf{};
  long j = 0;
  for (; j + VL <= len; j += VL) {
    vf e = exp_nonpositive(load(row + j) * splat(mul) - splat(sub));
    store(row + j, e);
    acc += e;
  }
  if (j < len && j + VL <= width) {  // the causal diagonal: one vector, lanes past the row's last key zeroed
    vf lane = vf{};
    for (int v = 0; v < VL; ++v) lane[v] = static_cast<float>(v);
    vf e = exp_nonpositive(load(row + j) * splat(mul) - splat(sub));
    e = lane < splat(static_cast<float>(len - j)) ? e : vf{};
    store(row + j, e);
    acc += e;
    j += VL;
  }
  float sum = 0.0f;
  for (int v = 0; v < VL; ++v) sum += acc[v];
  for (; j < len; ++j) {
    row[j] = std::exp(row[j] * mul - sub);
    sum += row[j];
  }
  for (; j < width; ++j) row[j] = 0.0f;
  return sum;
}

float row_max(const float* row, long len) {
  float best = -INFINITY;
  long j = 0;
  if (len >= VL) {
    vf acc = load(row);
    for (j = VL; j + VL <= len; j += VL) {
      vf x = load(row + j);
      acc = x > acc ? x : acc;
    }
    for (int v = 0; v < VL; ++v) best = std::max(best, acc[v]);
  }
  for (; j < len; ++j) best = std::max(best, row[j]);
  return best;
}

struct Shape {
  long b, t, n, h, s, g;
  long r() const { return n / g; }
  long q_row() const { return n * h; }  // stride between positions in q / o / dq
  long k_row() const { return g * h; }  // ... in k / v / dk / dv
};

constexpr long BQ = 64;  // query rows per block: a block's scores (BQ x S floats) stay in L2 up to S of a few 1000

struct Keys {
  long lo, hi;  // the keys [lo, hi) a query row (or a block of rows) reads
  long size() const { return hi - lo; }
};

// Where the documents of one batch row lie: extent[i] holds every key of query i's segment, and `mixed[i]` says
// other segments' keys sit inside it too (an id used again after another document), so that row also needs a
// key-by-key mask. Documents as the data builds them (contiguous ids) never need one: their extents are exact.
struct Documents {
  std::vector<Keys> extent;
  std::vector<char> mixed;
};

// Segment ids [S] of one batch row -> the documents of its T query rows (all ids equal: one document, any T).
Documents documents_of(const int32_t* ids, long s, long t) {
  Documents docs{std::vector<Keys>(t, Keys{0, s}), std::vector<char>(t, 0)};
  if (std::all_of(ids, ids + s, [&](int32_t id) { return id == ids[0]; })) return docs;
  // Several documents (S == T, checked before): a hash lookup per run of equal ids, not per key.
  std::unordered_map<int32_t, std::pair<Keys, long>> seen;  // id -> (its first to last key, its number of runs)
  for (long j = 0, end; j < s; j = end) {
    for (end = j + 1; end < s && ids[end] == ids[j]; ++end) {
    }
    auto [it, fresh] = seen.try_emplace(ids[j], Keys{j, end}, 1L);
    if (!fresh) it->second = {Keys{it->second.first.lo, end}, it->second.second + 1};
  }
  for (long i = 0; i < t; ++i) {
    const auto& [keys, runs] = seen.at(ids[i]);
    docs.extent[i] = keys;
    docs.mixed[i] = runs > 1;
  }
  return docs;
}

// Sets the scores of the keys [0, len) (ids key_ids) that are not in document `id` to `fill`; returns the sum of
// the values it replaced.
float keep_document(float* row, const int32_t* key_ids, long len, int32_t id, float fill) {
  float replaced = 0.0f;
  for (long j = 0; j < len; ++j)
    if (key_ids[j] != id) {
      replaced += row[j];
      row[j] = fill;
    }
  return replaced;
}

Keys row_keys(const Shape& d, long qi, bool causal, long window, const Documents& docs) {
  const Keys doc = docs.extent[qi];
  return {std::max(doc.lo, window ? std::max(0L, qi - window + 1) : 0L),
          std::min(doc.hi, causal ? qi + 1 : window ? std::min(d.s, qi + window) : d.s)};
}

// Key ranges are widened to multiples of KP keys (within S) so the products run on whole vectors: a ragged width
// left the scalar column loop a third of a windowed call. KP = 16 rather than BQ: packed blocks 1.15-1.17x and
// a window of 24 1.22x faster (forward + backward), the rest unchanged (attention_kernels.KEY_PANEL mirrors it).
constexpr long KP = 16;

// The keys a query block reads: from the first key any of its rows sees to the last, so causal blocks stop at
// their last row (as the `blocked` XLA kernel does), windowed blocks skip the keys out of reach and packed
// documents the keys of other documents; the keys added by the widening get P = 0 like any masked one.
Keys block_keys(const Shape& d, long q0, long rows, bool causal, long window, const Documents& docs) {
  Keys keys = row_keys(d, q0, causal, window, docs);
  for (long qi = q0 + 1; qi < q0 + rows; ++qi) {
    const Keys row = row_keys(d, qi, causal, window, docs);
    keys = {std::min(keys.lo, row.lo), std::max(keys.hi, row.hi)};
  }
  return {keys.lo - keys.lo % KP, std::min(d.s, (keys.hi + KP - 1) / KP * KP)};
}

// The end of the query block that starts at row q0: BQ rows, or fewer where a document ends inside them, so that
// the rows of two packed documents never read the union of both documents' keys (rows with the same extent are
// the rows of one document): packed bidirectional blocks 1.16x faster (forward + backward), causal ones and
// unpacked rows unchanged.
long block_end(const Documents& docs, long q0, long t) {
  const long end = std::min(q0 + BQ, t);
  long q1 = q0 + 1;
  while (q1 < end && docs.extent[q1].lo == docs.extent[q0].lo) ++q1;
  return q1;
}

// Runs fn(task) for task in [0, tasks) on `threads` threads (this one included).
template <typename Fn>
void parallel_for(long tasks, long threads, Fn fn) {
  threads = std::max(1L, std::min(threads, tasks));
  std::atomic<long> next{0};
  auto worker = [&] {
    for (long task = next++; task < tasks; task = next++) fn(task);
  };
  std::vector<std::thread> pool;
  for (long i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

// K^T (or V^T) of one (batch row, KV head): out[h, j] = x[j, h].
void transpose_rows(const float* x, long rows, long h, long ld, float* out) {
  constexpr long TB = 16;  // 16 x 16 blocks: both the reads and the writes stay within a few cache lines
  for (long j0 = 0; j0 < rows; j0 += TB)
    for (long c0 = 0; c0 < h; c0 += TB)
      for (long c = c0; c < std::min(c0 + TB, h); ++c)
        for (long j = j0; j < std::min(j0 + TB, rows); ++j) out[c * rows + j] = x[j * ld + c];
}

void forward(const Shape& d, bool causal, long window, long threads, const float* q, const float* k, const float* v,
             const int32_t* ids, float* o, float* lse) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.h));
  parallel_for(d.b * d.g, threads, [&](long task) {
    const long bi = task / d.g, gi = task % d.g;
    const int32_t* row_ids = ids + bi * d.s;
    const Documents docs = documents_of(row_ids, d.s, d.t);
    const float* k0 = k + (bi * d.s * d.g + gi) * d.h;
    const float* v0 = v + (bi * d.s * d.g + gi) * d.h;
    std::vector<float> kt(d.h * d.s), scores(BQ * d.s), inv_sum(BQ);
    transpose_rows(k0, d.s, d.h, d.k_row(), kt.data());
    for (long ri = 0; ri < d.r(); ++ri) {
      const long ni = gi * d.r() + ri;
      for (long q0 = 0, q1; q0 < d.t; q0 = q1) {
        q1 = block_end(docs, q0, d.t);
        const long rows = q1 - q0;
        const Keys kb = block_keys(d, q0, rows, causal, window, docs);
        const long keys = kb.size();
        const float* qb = q + ((bi * d.t + q0) * d.n + ni) * d.h;
        gemm(rows, keys, d.h, qb, d.q_row(), 1, kt.data() + kb.lo, d.s, scores.data(), keys, false);
        for (long i = 0; i < rows; ++i) {
          const long qi = q0 + i;
          const Keys kr = row_keys(d, qi, causal, window, docs);
          const long first = kr.lo - kb.lo;  // this row reads the block's keys [first, first + kr.size())
          float* row = scores.data() + i * keys;
          std::fill(row, row + first, 0.0f);
          if (docs.mixed[qi]) keep_document(row + first, row_ids + kr.lo, kr.size(), row_ids[qi], -INFINITY);
          const float top = row_max(row + first, kr.size()) * scale;
          float sum = exp_row(row + first, kr.size(), keys - first, scale, top);
          if (docs.mixed[qi])  // exp(-inf) came out as ~1e-38 (exp_nonpositive's floor): exactly 0 instead
            sum -= keep_document(row + first, row_ids + kr.lo, kr.size(), row_ids[qi], 0.0f);
          inv_sum[i] = 1.0f / sum;
          lse[(bi * d.n + ni) * d.t + qi] = top + std::log(sum);
        }
        // O = (E V) / rowsum(E): the division on the [rows, H] output instead of the [rows, keys] exponentials
        float* ob = o + ((bi * d.t + q0) * d.n + ni) * d.h;
        gemm(rows, d.h, keys, scores.data(), keys, 1, v0 + kb.lo * d.k_row(), d.k_row(), ob, d.q_row(), false);
        for (long i = 0; i < rows; ++i)
          for (long c = 0; c < d.h; ++c) ob[i * d.q_row() + c] *= inv_sum[i];
      }
    }
  });
}

void backward(const Shape& d, bool causal, long window, long threads, const float* q, const float* k, const float* v,
              const int32_t* ids, const float* o, const float* lse, const float* dout, float* dq, float* dk,
              float* dv) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.h));
  parallel_for(d.b * d.g, threads, [&](long task) {
    const long bi = task / d.g, gi = task % d.g;
    const int32_t* row_ids = ids + bi * d.s;
    const Documents docs = documents_of(row_ids, d.s, d.t);
    const long kv_off = (bi * d.s * d.g + gi) * d.h;
    std::vector<float> kt(d.h * d.s), vt(d.h * d.s), probs(BQ * d.s), dprobs(BQ * d.s), dk_acc(d.s * d.h, 0.0f),
        dv_acc(d.s * d.h, 0.0f);
    transpose_rows(k + kv_off, d.s, d.h, d.k_row(), kt.data());
    transpose_rows(v + kv_off, d.s, d.h, d.k_row(), vt.data());
    for (long ri = 0; ri < d.r(); ++ri) {
      const long ni = gi * d.r() + ri;
      for (long q0 = 0, q1; q0 < d.t; q0 = q1) {
        q1 = block_end(docs, q0, d.t);
        const long rows = q1 - q0;
        const Keys kb = block_keys(d, q0, rows, causal, window, docs);
        const long keys = kb.size();
        const long row_off = ((bi * d.t + q0) * d.n + ni) * d.h;
        const float *qb = q + row_off, *ob = o + row_off, *db = dout + row_off;
        gemm(rows, keys, d.h, qb, d.q_row(), 1, kt.data() + kb.lo, d.s, probs.data(), keys, false);
        gemm(rows, keys, d.h, db, d.q_row(), 1, vt.data() + kb.lo, d.s, dprobs.data(), keys, false);
        for (long i = 0; i < rows; ++i) {
          float *p = probs.data() + i * keys, *dp = dprobs.data() + i * keys;
          const long qi = q0 + i;
          const Keys kr = row_keys(d, qi, causal, window, docs);
          const long first = kr.lo - kb.lo;
          std::fill(p, p + first, 0.0f);  // keys out of the row's reach: P = 0, so dS = 0 there too
          exp_row(p + first, kr.size(), keys - first, scale, lse[(bi * d.n + ni) * d.t + qi]);
          if (docs.mixed[qi]) keep_document(p + first, row_ids + kr.lo, kr.size(), row_ids[qi], 0.0f);
          float delta = 0.0f;  // sum_h dO[i, h] O[i, h] = sum_j P[i, j] dP[i, j]
          for (long c = 0; c < d.h; ++c) delta += db[i * d.q_row() + c] * ob[i * d.q_row() + c];
          // dS = P (dP - delta), times the score scale so that dQ = dS K and dK = dS^T Q directly.
          for (long j = 0; j < keys; ++j) dp[j] = scale * p[j] * (dp[j] - delta);
        }
        gemm(keys, d.h, rows, probs.data(), 1, keys, db, d.q_row(), dv_acc.data() + kb.lo * d.h, d.h, true);
        gemm(keys, d.h, rows, dprobs.data(), 1, keys, qb, d.q_row(), dk_acc.data() + kb.lo * d.h, d.h, true);
        gemm(rows, d.h, keys, dprobs.data(), keys, 1, k + kv_off + kb.lo * d.k_row(), d.k_row(), dq + row_off,
             d.q_row(), false);
      }
    }
    for (long j = 0; j < d.s; ++j) {
      std::memcpy(dk + kv_off + j * d.k_row(), dk_acc.data() + j * d.h, d.h * sizeof(float));
      std::memcpy(dv + kv_off + j * d.k_row(), dv_acc.data() + j * d.h, d.h * sizeof(float));
    }
  });
}

Shape shape_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Shape{qd[0], qd[1], qd[2], qd[3], kd[1], kd[2]};
}

ffi::Error check(const Shape& d, bool causal, long window, ffi::Buffer<ffi::S32>& ids) {
  if (d.g <= 0 || d.n % d.g != 0) return ffi::Error::InvalidArgument("query heads must be a multiple of KV heads");
  if ((causal || window) && d.s != d.t)
    return ffi::Error::InvalidArgument("causal or windowed attention needs as many keys as queries");
  if (window < 0) return ffi::Error::InvalidArgument("the window must not be negative");
  auto id = ids.dimensions();
  if (id.size() != 2 || id[0] != d.b || id[1] != d.s)
    return ffi::Error::InvalidArgument("segment ids must be [batch, keys]");
  const int32_t* x = ids.typed_data();
  if (d.s != d.t && std::any_of(x, x + d.b * d.s, [&](int32_t v) { return v != x[0]; }))
    return ffi::Error::InvalidArgument("packed documents need as many keys as queries");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                       ffi::Buffer<ffi::S32> ids, ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse,
                       int64_t causal, int64_t window, int64_t threads) {
  Shape d = shape_of(q, k);
  if (auto err = check(d, causal, window, ids); err.failure()) return err;
  forward(d, causal, window, threads, q.typed_data(), k.typed_data(), v.typed_data(), ids.typed_data(),
          o->typed_data(), lse->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv, int64_t causal, int64_t window, int64_t threads) {
  Shape d = shape_of(q, k);
  if (auto err = check(d, causal, window, ids); err.failure()) return err;
  backward(d, causal, window, threads, q.typed_data(), k.typed_data(), v.typed_data(), ids.typed_data(),
           o.typed_data(), lse.typed_data(), dout.typed_data(), dq->typed_data(), dk->typed_data(), dv->typed_data());
  return ffi::Error::Success();
}

// Both handlers read q, k, v and the segment ids first and take the same attributes (cpu_attention.py passes them
// by name); the builder's methods take the binding as an rvalue.
template <typename Binding>
auto with_inputs(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::Buffer<ffi::F32>>()   // q
      .template Arg<ffi::Buffer<ffi::F32>>()   // k
      .template Arg<ffi::Buffer<ffi::F32>>()   // v
      .template Arg<ffi::Buffer<ffi::S32>>();  // segment ids
}

template <typename Binding>
auto with_attrs(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("causal")
      .template Attr<int64_t>("window")
      .template Attr<int64_t>("threads");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxformerAttentionForward, ForwardImpl,
                              with_attrs(with_inputs(ffi::Ffi::Bind())
                                             .Ret<ffi::Buffer<ffi::F32>>()    // o
                                             .Ret<ffi::Buffer<ffi::F32>>()));  // lse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxformerAttentionBackward, BackwardImpl,
                              with_attrs(with_inputs(ffi::Ffi::Bind())
                                             .Arg<ffi::Buffer<ffi::F32>>()    // o
                                             .Arg<ffi::Buffer<ffi::F32>>()    // lse
                                             .Arg<ffi::Buffer<ffi::F32>>()    // dout
                                             .Ret<ffi::Buffer<ffi::F32>>()    // dq
                                             .Ret<ffi::Buffer<ffi::F32>>()    // dk
                                             .Ret<ffi::Buffer<ffi::F32>>()));  // dv
