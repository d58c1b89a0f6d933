// Decode attention over a paged KV cache (vLLM's paged attention, for the CPU): one query
// token per sequence, its keys and values read in place from the blocks its block table
// names, never gathered into a copy. Keys are stored transposed within a block, (D, BLOCK),
// so a block's scores are BLOCK-wide multiply-adds with no horizontal sums; values as
// (BLOCK, D). Float32 accumulation whatever the storage type (float32 or bfloat16).
// The common shapes (query heads per KV head G: 1-5, 8; head size D: 16-128) are compiled
// as constants, so the accumulators stay in vector registers; `supports` says which.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

namespace {

constexpr int64_t BLOCK = 16;  // tokens per KV block: llmos.kernel.blocks.BLOCK

inline float widen(float x) { return x; }
inline float widen(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

struct Shape {
  int64_t batch, q_heads, kv_heads, table_width;
  float scale;
};

// One (sequence, KV head): its G queries against its len keys. G and D are compile-time here.
template <typename T, int G, int D>
void attend(const T* q, const T* k, const T* v, const int32_t* owned, int64_t len, int64_t block_stride, int64_t h,
            T* out, float scale, std::vector<float>& scores) {
  const int64_t blocks = (len + BLOCK - 1) / BLOCK, padded = blocks * BLOCK;
  scores.resize(G * padded);
  float qf[G][D];
  for (int g = 0; g < G; ++g)
    for (int d = 0; d < D; ++d) qf[g][d] = widen(q[g * D + d]) * scale;
  for (int64_t j = 0; j < blocks; ++j) {
    const T* keys = k + owned[j] * block_stride + h * BLOCK * D;
    float s[G][BLOCK] = {};
    for (int d = 0; d < D; ++d) {
      float row[BLOCK];
#pragma omp simd
      for (int i = 0; i < BLOCK; ++i) row[i] = widen(keys[d * BLOCK + i]);
      for (int g = 0; g < G; ++g) {
#pragma omp simd
        for (int i = 0; i < BLOCK; ++i) s[g][i] += qf[g][d] * row[i];
      }
    }
    for (int g = 0; g < G; ++g) std::memcpy(scores.data() + g * padded + j * BLOCK, s[g], sizeof s[g]);
  }
  float total[G];
  for (int g = 0; g < G; ++g) {
    float* sg = scores.data() + g * padded;
    const float top = *std::max_element(sg, sg + len);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < len; ++t) sum += (sg[t] = std::exp(sg[t] - top));
    total[g] = sum;
  }
  float acc[G][D] = {};
  for (int64_t j = 0; j < blocks; ++j) {
    const T* values = v + owned[j] * block_stride + h * BLOCK * D;
    const int64_t n = std::min(BLOCK, len - j * BLOCK);
    for (int64_t i = 0; i < n; ++i) {
      float row[D];
#pragma omp simd
      for (int d = 0; d < D; ++d) row[d] = widen(values[i * D + d]);
      for (int g = 0; g < G; ++g) {
        const float p = scores[g * padded + j * BLOCK + i];
#pragma omp simd
        for (int d = 0; d < D; ++d) acc[g][d] += p * row[d];
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int d = 0; d < D; ++d) out[g * D + d] = static_cast<T>(acc[g][d] / total[g]);
}

template <typename T, int G, int D>
void decode(const T* q, const T* k, const T* v, const int32_t* table, const int32_t* lens, T* out, const Shape& s) {
  const int64_t block_stride = s.kv_heads * BLOCK * D;
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / s.kv_heads, h = item % s.kv_heads;
      const int64_t first = b * s.q_heads + h * G;  // its first query head
      attend<T, G, D>(q + first * D, k, v, table + b * s.table_width, lens[b], block_stride, h, out + first * D,
                      s.scale, scores);
    }
  });
}

template <typename T, int D>
bool dispatch_group(int64_t group, const T* q, const T* k, const T* v, const int32_t* table, const int32_t* lens,
                    T* out, const Shape& s) {
  switch (group) {
    case 1: decode<T, 1, D>(q, k, v, table, lens, out, s); return true;
    case 2: decode<T, 2, D>(q, k, v, table, lens, out, s); return true;
    case 3: decode<T, 3, D>(q, k, v, table, lens, out, s); return true;
    case 4: decode<T, 4, D>(q, k, v, table, lens, out, s); return true;
    case 5: decode<T, 5, D>(q, k, v, table, lens, out, s); return true;
    case 8: decode<T, 8, D>(q, k, v, table, lens, out, s); return true;
    default: return false;
  }
}

template <typename T>
bool dispatch(int64_t group, int64_t dim, const T* q, const T* k, const T* v, const int32_t* table,
              const int32_t* lens, T* out, const Shape& s) {
  switch (dim) {
    case 16: return dispatch_group<T, 16>(group, q, k, v, table, lens, out, s);
    case 32: return dispatch_group<T, 32>(group, q, k, v, table, lens, out, s);
    case 64: return dispatch_group<T, 64>(group, q, k, v, table, lens, out, s);
    case 128: return dispatch_group<T, 128>(group, q, k, v, table, lens, out, s);
    default: return false;
  }
}

// q (B, Hq, D); k (blocks, Hkv, D, BLOCK) and v (blocks, Hkv, BLOCK, D) of one layer;
// table (B, W) int32 block ids; lens (B,) int32 keys to attend, each at least 1.
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
                        const at::Tensor& lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4, "paged_decode: q is (B, Hq, D), k and v 4-d");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && table.is_contiguous() &&
                  lens.is_contiguous(), "paged_decode: inputs must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(), "paged_decode: dtypes differ");
  TORCH_CHECK(table.scalar_type() == at::kInt && lens.scalar_type() == at::kInt, "paged_decode: int32 table and lens");
  const int64_t batch = q.size(0), q_heads = q.size(1), dim = q.size(2), kv_heads = k.size(1);
  TORCH_CHECK(k.size(2) == dim && k.size(3) == BLOCK && v.size(2) == BLOCK && v.size(3) == dim &&
                  v.size(0) == k.size(0) && v.size(1) == kv_heads, "paged_decode: k is (N, Hkv, D, 16), v (N, Hkv, 16, D)");
  TORCH_CHECK(q_heads % kv_heads == 0 && table.size(0) == batch && lens.size(0) == batch,
              "paged_decode: shapes disagree");
  const Shape shape{batch, q_heads, kv_heads, table.size(1), static_cast<float>(scale)};
  const int64_t group = q_heads / kv_heads;
  auto out = at::empty_like(q);
  bool done;
  if (q.scalar_type() == at::kFloat) {
    done = dispatch<float>(group, dim, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                           table.data_ptr<int32_t>(), lens.data_ptr<int32_t>(), out.data_ptr<float>(), shape);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "paged_decode: float32 or bfloat16");
    using B16 = c10::BFloat16;
    done = dispatch<B16>(group, dim, q.data_ptr<B16>(), k.data_ptr<B16>(), v.data_ptr<B16>(), table.data_ptr<int32_t>(),
                         lens.data_ptr<int32_t>(), out.data_ptr<B16>(), shape);
  }
  TORCH_CHECK(done, "paged_decode: no kernel for ", group, " query heads per KV head of size ", dim);
  return out;
}

// Which (query heads per KV head, head size) pairs `decode` serves.
bool supports(int64_t group, int64_t dim) {
  return (dim == 16 || dim == 32 || dim == 64 || dim == 128) && (group <= 5 || group == 8) && group >= 1;
}

// -- the small operations around a decode pass, fused (the quantized path) -------------------------------
// At one token a step, a layer's dozen small PyTorch operators cost more in dispatch than in
// arithmetic (SmolLM2 on 2 cores: ~3 ms of a ~9 ms step); these do the same work in one call.

// LlamaRMSNorm's arithmetic: the mean square in float32, x scaled and rounded to the storage
// type, then times the weight (rounded again). Rows in parallel once there are many.
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t rows, int64_t dim, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + r * dim;
      T* dst = out + r * dim;
      float squares = 0.f;
      for (int64_t i = 0; i < dim; ++i) {
        const float value = widen(row[i]);
        squares += value * value;
      }
      const float inv = 1.0f / std::sqrt(squares / static_cast<float>(dim) + eps);
      for (int64_t i = 0; i < dim; ++i) dst[i] = T(widen(w[i]) * widen(T(widen(row[i]) * inv)));
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && weight.dim() == 1 && x.size(-1) == weight.size(0),
              "rms_norm: x (..., D) and weight (D,), contiguous");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "rms_norm: x and weight dtypes differ");
  auto out = at::empty_like(x);
  const int64_t dim = weight.size(0), rows = x.numel() / dim;
  if (x.scalar_type() == at::kFloat) {
    rms_norm_rows<float>(x.data_ptr<float>(), weight.data_ptr<float>(), out.data_ptr<float>(), rows, dim, eps);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16, "rms_norm: float32 or bfloat16");
    using B16 = c10::BFloat16;
    rms_norm_rows<B16>(x.data_ptr<B16>(), weight.data_ptr<B16>(), out.data_ptr<B16>(), rows, dim, eps);
  }
  return out;
}

// A decode pass's rotary embedding and K/V store: each row's query and key heads rotated
// (x*cos + swap_halves(x)*sin, sin's first half negated by the caller), keys written to the
// row's block transposed (D, BLOCK) and values as (BLOCK, D), as paged_decode reads them.
template <typename T>
void rope_store_rows(const T* qkv, const T* cos, const T* sin, T* k, T* v, const int64_t* blocks,
                     const int64_t* offsets, T* q_out, int64_t batch, int64_t q_heads, int64_t kv_heads,
                     int64_t dim) {
  const int64_t half = dim / 2, heads = q_heads + 2 * kv_heads;
  for (int64_t b = 0; b < batch; ++b) {
    const T* row = qkv + b * heads * dim;
    const T* c = cos + b * dim;
    const T* s = sin + b * dim;
    T* kb = k + blocks[b] * kv_heads * dim * BLOCK;
    T* vb = v + blocks[b] * kv_heads * BLOCK * dim;
    const int64_t at = offsets[b];
    for (int64_t h = 0; h < q_heads + kv_heads; ++h) {
      const T* x = row + h * dim;
      for (int64_t i = 0; i < dim; ++i) {
        const float turned = widen(x[i]) * widen(c[i]) + widen(x[i < half ? i + half : i - half]) * widen(s[i]);
        if (h < q_heads) {
          q_out[(b * q_heads + h) * dim + i] = T(turned);
        } else {
          kb[((h - q_heads) * dim + i) * BLOCK + at] = T(turned);
        }
      }
    }
    for (int64_t h = 0; h < kv_heads; ++h) {
      const T* x = row + (q_heads + kv_heads + h) * dim;
      std::copy(x, x + dim, vb + (h * BLOCK + at) * dim);
    }
  }
}

// qkv (B, Hq + 2 Hkv, D); cos, sin (B, D); k (N, Hkv, D, 16), v (N, Hkv, 16, D) of one layer,
// written in place; blocks, offsets (B,) int64. Returns the rotated queries (B, Hq, D).
at::Tensor rope_store(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& k, at::Tensor& v,
                      const at::Tensor& blocks, const at::Tensor& offsets, int64_t q_heads) {
  TORCH_CHECK(qkv.dim() == 3 && cos.dim() == 2 && sin.dim() == 2 && k.dim() == 4 && v.dim() == 4,
              "rope_store: qkv (B, H, D), cos and sin (B, D), k and v 4-d");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&qkv, &cos, &sin, &k, &v, &blocks, &offsets}) {
    TORCH_CHECK(t->is_contiguous(), "rope_store: inputs must be contiguous");
  }
  const int64_t batch = qkv.size(0), dim = qkv.size(2), kv_heads = k.size(1);
  TORCH_CHECK(qkv.size(1) == q_heads + 2 * kv_heads && dim % 2 == 0 && cos.size(0) == batch && cos.size(1) == dim &&
                  sin.sizes() == cos.sizes() && k.size(2) == dim && k.size(3) == BLOCK && v.size(2) == BLOCK &&
                  v.size(3) == dim && blocks.numel() == batch && offsets.numel() == batch,
              "rope_store: shapes disagree");
  TORCH_CHECK(qkv.scalar_type() == cos.scalar_type() && cos.scalar_type() == sin.scalar_type() &&
                  sin.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "rope_store: dtypes differ");
  TORCH_CHECK(blocks.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong, "rope_store: int64 blocks");
  const int64_t* block_ids = blocks.data_ptr<int64_t>();
  const int64_t* offset_ids = offsets.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {  // a write past the pool would corrupt memory silently
    TORCH_CHECK(block_ids[b] >= 0 && block_ids[b] < k.size(0) && offset_ids[b] >= 0 && offset_ids[b] < BLOCK,
                "rope_store: row ", b, " writes to block ", block_ids[b], " offset ", offset_ids[b], " of ", k.size(0));
  }
  auto q = at::empty({batch, q_heads, dim}, qkv.options());
  if (qkv.scalar_type() == at::kFloat) {
    rope_store_rows<float>(qkv.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), k.data_ptr<float>(),
                           v.data_ptr<float>(), block_ids, offset_ids, q.data_ptr<float>(), batch, q_heads, kv_heads,
                           dim);
  } else {
    TORCH_CHECK(qkv.scalar_type() == at::kBFloat16, "rope_store: float32 or bfloat16");
    using B16 = c10::BFloat16;
    rope_store_rows<B16>(qkv.data_ptr<B16>(), cos.data_ptr<B16>(), sin.data_ptr<B16>(), k.data_ptr<B16>(),
                         v.data_ptr<B16>(), block_ids, offset_ids, q.data_ptr<B16>(), batch, q_heads, kv_heads, dim);
  }
  return q;
}

// -- LoRA adapters in a batch (Punica's BGMV, for the CPU) ------------------------------------------------
// y[r] += (x[r] . A[c..c+n]^T) . Bt[c..c+n] for each token row r, where [c, c+n) are the columns of
// that row's adapter in the adapter set's concatenated factors (n = 0: the base model, nothing
// added). Each row computes its own adapter's rank only, never its neighbours' (a masked matmul
// over every adapter's columns would), and the add is in place: one call instead of four
// small matmuls, a mask and an add, whose dispatch cost more than their arithmetic. Float32
// accumulation; y is rounded once.
template <typename T>
void lora_rows(T* y, const T* x, const T* a, const T* bt, const int32_t* start, const int32_t* count, int64_t rows,
               int64_t in, int64_t out, int64_t max_rank) {
  const int64_t work = max_rank * (in + out);  // per row
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(work, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> xs(in), low(max_rank), acc(out);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = count[r], c = start[r];
      if (n == 0) continue;
      const T* xr = x + r * in;
      for (int64_t i = 0; i < in; ++i) xs[i] = widen(xr[i]);
      for (int64_t j = 0; j < n; ++j) {
        const T* aj = a + (c + j) * in;
        float dot = 0.f;
        for (int64_t i = 0; i < in; ++i) dot += xs[i] * widen(aj[i]);
        low[j] = dot;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const T* bj = bt + (c + j) * out;
        const float l = low[j];
        for (int64_t o = 0; o < out; ++o) acc[o] += l * widen(bj[o]);
      }
      T* yr = y + r * out;
      for (int64_t o = 0; o < out; ++o) yr[o] = T(widen(yr[o]) + acc[o]);
    }
  });
}

void lora_add(at::Tensor& y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& bt, const at::Tensor& start,
              const at::Tensor& count) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&y, &x, &a, &bt, &start, &count}) {
    TORCH_CHECK(t->is_contiguous(), "lora_add: inputs must be contiguous");
  }
  const int64_t in = a.size(1), out = bt.size(1), rank = a.size(0), rows = x.numel() / std::max<int64_t>(in, 1);
  TORCH_CHECK(a.dim() == 2 && bt.dim() == 2 && bt.size(0) == rank && x.size(-1) == in && y.size(-1) == out &&
                  y.numel() == rows * out && start.numel() == rows && count.numel() == rows,
              "lora_add: y (..., out), x (..., in), a (R, in), bt (R, out), start and count (rows,)");
  TORCH_CHECK(start.scalar_type() == at::kInt && count.scalar_type() == at::kInt, "lora_add: int32 columns");
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && x.scalar_type() == a.scalar_type() &&
                  a.scalar_type() == bt.scalar_type(),
              "lora_add: dtypes differ");
  const int32_t* starts = start.data_ptr<int32_t>();
  const int32_t* counts = count.data_ptr<int32_t>();
  int64_t max_rank = 0;
  for (int64_t r = 0; r < rows; ++r) {  // a read past the factors would return garbage silently
    TORCH_CHECK(counts[r] >= 0 && starts[r] >= 0 && starts[r] + counts[r] <= rank,
                "lora_add: row ", r, " reads columns ", starts[r], "+", counts[r], " of ", rank);
    max_rank = std::max<int64_t>(max_rank, counts[r]);
  }
  if (y.scalar_type() == at::kFloat) {
    lora_rows<float>(y.data_ptr<float>(), x.data_ptr<float>(), a.data_ptr<float>(), bt.data_ptr<float>(), starts,
                     counts, rows, in, out, max_rank);
  } else {
    TORCH_CHECK(y.scalar_type() == at::kBFloat16, "lora_add: float32 or bfloat16");
    using B16 = c10::BFloat16;
    lora_rows<B16>(y.data_ptr<B16>(), x.data_ptr<B16>(), a.data_ptr<B16>(), bt.data_ptr<B16>(), starts, counts, rows,
                   in, out, max_rank);
  }
}

}  // namespace

TORCH_LIBRARY(llmos_paged, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.impl("rms_norm", c10::DispatchKey::CPU, TORCH_FN(rms_norm));
  m.def("rope_store(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k, Tensor(b!) v, Tensor blocks, Tensor offsets, "
        "int q_heads) -> Tensor");
  m.impl("rope_store", c10::DispatchKey::CPU, TORCH_FN(rope_store));
  m.def("decode(Tensor q, Tensor k, Tensor v, Tensor table, Tensor lens, float scale) -> Tensor");
  m.impl("decode", c10::DispatchKey::CPU, TORCH_FN(paged_decode));
  m.def("lora_add(Tensor(a!) y, Tensor x, Tensor a, Tensor bt, Tensor start, Tensor count) -> ()");
  m.impl("lora_add", c10::DispatchKey::CPU, TORCH_FN(lora_add));
  m.def("supports(int group, int dim) -> bool", &supports);
}
