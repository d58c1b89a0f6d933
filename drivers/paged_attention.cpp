// Decode attention over a paged KV cache (vLLM's paged attention, for the CPU): one query
// token per sequence, its keys and values read in place from the blocks its block table
// names, never gathered into a copy. Keys are stored transposed within a block, (D, BLOCK),
// so a block's scores are BLOCK-wide multiply-adds with no horizontal sums; values as
// (BLOCK, D). Float32 accumulation whatever the storage type (float32 or bfloat16; bfloat16
// K/V under float32 queries too: a float32 model's K/V in half the bytes).
// The common shapes (query heads per KV head G: 1-5, 8; head size D: 16-128) are compiled
// as constants, so the accumulators stay in vector registers; `supports` says which.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/linear.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <vector>

#include "team.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

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
template <typename T, typename S, int G, int D>
void attend(const T* q, const S* k, const S* v, const int32_t* owned, int64_t len, int64_t block_stride, int64_t h,
            T* out, float scale, std::vector<float>& scores) {
  const int64_t blocks = (len + BLOCK - 1) / BLOCK, padded = blocks * BLOCK;
  scores.resize(G * padded);
  float qf[G][D];
  for (int g = 0; g < G; ++g)
    for (int d = 0; d < D; ++d) qf[g][d] = widen(q[g * D + d]) * scale;
  for (int64_t j = 0; j < blocks; ++j) {
    const S* keys = k + owned[j] * block_stride + h * BLOCK * D;
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
    const S* values = v + owned[j] * block_stride + h * BLOCK * D;
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

template <typename T, typename S, int G, int D>
void decode(const T* q, const S* k, const S* v, const int32_t* table, const int32_t* lens, T* out, const Shape& s) {
  const int64_t block_stride = s.kv_heads * BLOCK * D;
  llmos::Team::split(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / s.kv_heads, h = item % s.kv_heads;
      const int64_t first = b * s.q_heads + h * G;  // its first query head
      attend<T, S, G, D>(q + first * D, k, v, table + b * s.table_width, lens[b], block_stride, h, out + first * D,
                      s.scale, scores);
    }
  });
}

template <typename T, typename S, int D>
bool dispatch_group(int64_t group, const T* q, const S* k, const S* v, const int32_t* table, const int32_t* lens,
                    T* out, const Shape& s) {
  switch (group) {
    case 1: decode<T, S, 1, D>(q, k, v, table, lens, out, s); return true;
    case 2: decode<T, S, 2, D>(q, k, v, table, lens, out, s); return true;
    case 3: decode<T, S, 3, D>(q, k, v, table, lens, out, s); return true;
    case 4: decode<T, S, 4, D>(q, k, v, table, lens, out, s); return true;
    case 5: decode<T, S, 5, D>(q, k, v, table, lens, out, s); return true;
    case 8: decode<T, S, 8, D>(q, k, v, table, lens, out, s); return true;
    default: return false;
  }
}

template <typename T, typename S>
bool dispatch(int64_t group, int64_t dim, const T* q, const S* k, const S* v, const int32_t* table,
              const int32_t* lens, T* out, const Shape& s) {
  switch (dim) {
    case 16: return dispatch_group<T, S, 16>(group, q, k, v, table, lens, out, s);
    case 32: return dispatch_group<T, S, 32>(group, q, k, v, table, lens, out, s);
    case 64: return dispatch_group<T, S, 64>(group, q, k, v, table, lens, out, s);
    case 128: return dispatch_group<T, S, 128>(group, q, k, v, table, lens, out, s);
    default: return false;
  }
}

// Whether K/V in k and v may serve queries computed in `compute`: the same dtype, or bfloat16
// under float32 (a float32 model's K/V kept in half the bytes). rope_store and paged_decode agree.
bool kv_stored_for(at::ScalarType compute, const at::Tensor& k, const at::Tensor& v) {
  const at::ScalarType stored = k.scalar_type();
  return v.scalar_type() == stored && (stored == compute || (compute == at::kFloat && stored == at::kBFloat16));
}

// q (B, Hq, D); k (blocks, Hkv, D, BLOCK) and v (blocks, Hkv, BLOCK, D) of one layer;
// table (B, W) int32 block ids; lens (B,) int32 keys to attend, each at least 1.
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
                        const at::Tensor& lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4, "paged_decode: q is (B, Hq, D), k and v 4-d");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && table.is_contiguous() &&
                  lens.is_contiguous(), "paged_decode: inputs must be contiguous");
  TORCH_CHECK(kv_stored_for(q.scalar_type(), k, v), "paged_decode: k and v share q's dtype, or are bfloat16 under "
              "float32 queries");
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
  using B16 = c10::BFloat16;
  const int32_t* tables = table.data_ptr<int32_t>();
  if (q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat) {
    done = dispatch<float, float>(group, dim, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), tables,
                                  lens.data_ptr<int32_t>(), out.data_ptr<float>(), shape);
  } else if (q.scalar_type() == at::kFloat) {  // K/V kept in bfloat16 for a float32 model
    done = dispatch<float, B16>(group, dim, q.data_ptr<float>(), k.data_ptr<B16>(), v.data_ptr<B16>(), tables,
                                lens.data_ptr<int32_t>(), out.data_ptr<float>(), shape);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "paged_decode: float32 or bfloat16");
    done = dispatch<B16, B16>(group, dim, q.data_ptr<B16>(), k.data_ptr<B16>(), v.data_ptr<B16>(), tables,
                              lens.data_ptr<int32_t>(), out.data_ptr<B16>(), shape);
  }
  TORCH_CHECK(done, "paged_decode: no kernel for ", group, " query heads per KV head of size ", dim);
  return out;
}

// -- gathering a pass's blocks for sdpa (prefill, scoring) ---------------------------------------------
// Each row's blocks of one layer copied into contiguous (B, Hkv, length, D) keys and values,
// the keys transposed back from their (D, BLOCK) blocks, in the model's dtype: one pass over
// the bytes where indexing, permuting and converting with PyTorch's operators took three, each
// opening a parallel region (~200-300 us a layer for 512 tokens on 2 cores; this, ~40 us).
inline float narrowed(float x, float*) { return x; }
inline c10::BFloat16 narrowed(c10::BFloat16 x, c10::BFloat16*) { return x; }
inline float narrowed(c10::BFloat16 x, float*) { return widen(x); }

template <typename S, typename T>
void gather_blocks(const S* k, const S* v, const int64_t* table, int64_t width, int64_t kv_heads, int64_t dim,
                   int64_t length, int64_t units, T* k_out, T* v_out) {
  const int64_t blocks = (length + BLOCK - 1) / BLOCK, block_stride = kv_heads * dim * BLOCK;
  // A unit is one block of one (row, KV head). ~1 MB of copies a chunk: below that, waking a
  // second thread costs more than it saves (these VMs: tens of microseconds a hand-off).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 19) / (BLOCK * dim * static_cast<int64_t>(sizeof(S))));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t row = u / (kv_heads * blocks), h = (u / blocks) % kv_heads, j = u % blocks;
      const int64_t first = j * BLOCK, count = std::min(BLOCK, length - first);
      const S* keys = k + table[row * width + j] * block_stride + h * dim * BLOCK;
      const S* values = v + table[row * width + j] * block_stride + h * BLOCK * dim;
      const int64_t at = ((row * kv_heads + h) * length + first) * dim;
      for (int64_t d = 0; d < dim; ++d)  // a key block's row d holds dimension d of its BLOCK tokens
        for (int64_t t = 0; t < count; ++t) k_out[at + t * dim + d] = narrowed(keys[d * BLOCK + t], k_out);
      if constexpr (std::is_same_v<S, T>) {
        std::memcpy(v_out + at, values, count * dim * sizeof(T));  // values are stored as sdpa takes them
      } else {
        for (int64_t i = 0; i < count * dim; ++i) v_out[at + i] = narrowed(values[i], v_out);
      }
    }
  });
}

// k (N, Hkv, D, BLOCK) and v (N, Hkv, BLOCK, D) of one layer, stored in float32 or bfloat16;
// table (B, W) int64 block ids covering positions 0..length-1 of each row. Returns keys and
// values (B, Hkv, length, D) in `dtype`: the stored one, or float32 from bfloat16.
std::tuple<at::Tensor, at::Tensor> gather_kv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
                                             int64_t length, at::ScalarType dtype) {
  TORCH_CHECK(k.dim() == 4 && v.dim() == 4 && k.is_contiguous() && v.is_contiguous() && table.is_contiguous(),
              "gather_kv: contiguous k (N, Hkv, D, 16) and v (N, Hkv, 16, D)");
  TORCH_CHECK(table.dim() == 2 && table.scalar_type() == at::kLong, "gather_kv: an int64 table (B, W)");
  TORCH_CHECK((k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16) && kv_stored_for(dtype, k, v),
              "gather_kv: k and v stored in dtype (float32 or bfloat16), or bfloat16 read as float32");
  const int64_t batch = table.size(0), width = table.size(1), kv_heads = k.size(1), dim = k.size(2);
  TORCH_CHECK(k.size(3) == BLOCK && v.size(2) == BLOCK && v.size(3) == dim && v.size(1) == kv_heads &&
                  v.size(0) == k.size(0), "gather_kv: k is (N, Hkv, D, 16), v (N, Hkv, 16, D)");
  TORCH_CHECK(length >= 1 && length <= width * BLOCK, "gather_kv: length ", length, " outside the table's ",
              width * BLOCK, " positions");
  auto k_out = at::empty({batch, kv_heads, length, dim}, k.options().dtype(dtype));
  auto v_out = at::empty_like(k_out);
  const int64_t units = batch * kv_heads * ((length + BLOCK - 1) / BLOCK);
  const int64_t* ids = table.data_ptr<int64_t>();
  using B16 = c10::BFloat16;
  if (k.scalar_type() == at::kFloat) {
    gather_blocks<float, float>(k.data_ptr<float>(), v.data_ptr<float>(), ids, width, kv_heads, dim, length, units,
                                k_out.data_ptr<float>(), v_out.data_ptr<float>());
  } else if (dtype == at::kFloat) {
    gather_blocks<B16, float>(k.data_ptr<B16>(), v.data_ptr<B16>(), ids, width, kv_heads, dim, length, units,
                              k_out.data_ptr<float>(), v_out.data_ptr<float>());
  } else {
    gather_blocks<B16, B16>(k.data_ptr<B16>(), v.data_ptr<B16>(), ids, width, kv_heads, dim, length, units,
                            k_out.data_ptr<B16>(), v_out.data_ptr<B16>());
  }
  return {k_out, v_out};
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
  llmos::Team::split(0, rows, 16, [&](int64_t begin, int64_t end) {
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

// LlamaMLP's act_fn(gate) * up for gate_up (rows, 2I) -> (rows, I), SiLU: one pass over the
// projection's output instead of a chunk, a SiLU into a temporary and a product (2 ms of a
// 16-agent step on 2 cores). SiLU in float32, rounded to the storage type before the product,
// as PyTorch's silu then mul round.
template <typename T>
void silu_mul_rows(const T* gate_up, T* out, int64_t rows, int64_t inner) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1));
  llmos::Team::split(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = gate_up + r * 2 * inner;
      const T* up = gate + inner;
      T* dst = out + r * inner;
#pragma omp simd
      for (int64_t i = 0; i < inner; ++i) {
        const float x = widen(gate[i]);
        dst[i] = T(widen(T(x / (1.0f + std::exp(-x)))) * widen(up[i]));
      }
    }
  });
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0,
              "silu_mul: gate_up (..., 2I), contiguous");
  std::vector<int64_t> shape = gate_up.sizes().vec();
  const int64_t inner = shape.back() / 2;
  shape.back() = inner;
  auto out = at::empty(shape, gate_up.options());
  const int64_t rows = inner == 0 ? 0 : out.numel() / inner;
  if (gate_up.scalar_type() == at::kFloat) {
    silu_mul_rows<float>(gate_up.data_ptr<float>(), out.data_ptr<float>(), rows, inner);
  } else {
    TORCH_CHECK(gate_up.scalar_type() == at::kBFloat16, "silu_mul: float32 or bfloat16");
    using B16 = c10::BFloat16;
    silu_mul_rows<B16>(gate_up.data_ptr<B16>(), out.data_ptr<B16>(), rows, inner);
  }
  return out;
}

// A decode pass's rotary embedding and K/V store: each row's query and key heads rotated
// (x*cos + swap_halves(x)*sin, sin's first half negated by the caller), keys written to the
// row's block transposed (D, BLOCK) and values as (BLOCK, D), as paged_decode reads them.
template <typename T, typename S>
void rope_store_rows(const T* qkv, const T* cos, const T* sin, S* k, S* v, const int64_t* blocks,
                     const int64_t* offsets, T* q_out, int64_t batch, int64_t q_heads, int64_t kv_heads,
                     int64_t dim) {
  const int64_t half = dim / 2, heads = q_heads + 2 * kv_heads;
  for (int64_t b = 0; b < batch; ++b) {
    const T* row = qkv + b * heads * dim;
    const T* c = cos + b * dim;
    const T* s = sin + b * dim;
    S* kb = k + blocks[b] * kv_heads * dim * BLOCK;
    S* vb = v + blocks[b] * kv_heads * BLOCK * dim;
    const int64_t at = offsets[b];
    for (int64_t h = 0; h < q_heads + kv_heads; ++h) {
      const T* x = row + h * dim;
      for (int64_t i = 0; i < dim; ++i) {
        const float turned = widen(x[i]) * widen(c[i]) + widen(x[i < half ? i + half : i - half]) * widen(s[i]);
        if (h < q_heads) {
          q_out[(b * q_heads + h) * dim + i] = T(turned);
        } else {
          kb[((h - q_heads) * dim + i) * BLOCK + at] = S(turned);
        }
      }
    }
    for (int64_t h = 0; h < kv_heads; ++h) {
      const T* x = row + (q_heads + kv_heads + h) * dim;
      S* to = vb + (h * BLOCK + at) * dim;
      for (int64_t i = 0; i < dim; ++i) to[i] = S(widen(x[i]));
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
                  kv_stored_for(qkv.scalar_type(), k, v),
              "rope_store: dtypes differ (k and v may be bfloat16 under a float32 qkv)");
  TORCH_CHECK(blocks.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong, "rope_store: int64 blocks");
  const int64_t* block_ids = blocks.data_ptr<int64_t>();
  const int64_t* offset_ids = offsets.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {  // a write past the pool would corrupt memory silently
    TORCH_CHECK(block_ids[b] >= 0 && block_ids[b] < k.size(0) && offset_ids[b] >= 0 && offset_ids[b] < BLOCK,
                "rope_store: row ", b, " writes to block ", block_ids[b], " offset ", offset_ids[b], " of ", k.size(0));
  }
  auto q = at::empty({batch, q_heads, dim}, qkv.options());
  using B16 = c10::BFloat16;
  if (qkv.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat) {
    rope_store_rows<float, float>(qkv.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(),
                                  k.data_ptr<float>(), v.data_ptr<float>(), block_ids, offset_ids, q.data_ptr<float>(),
                                  batch, q_heads, kv_heads, dim);
  } else if (qkv.scalar_type() == at::kFloat) {  // K/V kept in bfloat16 for a float32 model
    rope_store_rows<float, B16>(qkv.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), k.data_ptr<B16>(),
                                v.data_ptr<B16>(), block_ids, offset_ids, q.data_ptr<float>(), batch, q_heads, kv_heads,
                                dim);
  } else {
    TORCH_CHECK(qkv.scalar_type() == at::kBFloat16, "rope_store: float32 or bfloat16");
    rope_store_rows<B16, B16>(qkv.data_ptr<B16>(), cos.data_ptr<B16>(), sin.data_ptr<B16>(), k.data_ptr<B16>(),
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
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(work, 1));
  llmos::Team::split(0, rows, grain, [&](int64_t begin, int64_t end) {
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

// -- int8 weights (weight-only quantization of decode steps) --------------------------------------------
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k]: a decode step's projection, reading int8 weights
// (a quarter of float32's bytes). PyTorch's `_weight_int8pack_mm` wants bfloat16 activations,
// which a CPU without AVX-512-bf16 rounds and widens slowly; these need none. Two kernels, by
// the build's instruction set:
// - AVX2 without AVX-512: integer dot products. Each row of x is rounded to int16 codes with a
//   scale of its own (15 bits: far finer than the weights' 8), and vpmaddwd multiplies 16 code
//   pairs a instruction, twice float FMA's 8, from weights widened to int16 in one instruction
//   (to float takes two). Measured on a 2-core Zen 3, cache-hot: SmolLM2's gate_up 1.2-1.6x and
//   its lm_head 1.8x faster than oneDNN's float32 at 16 rows, and 1.4x faster at one row than
//   the float kernel below built for AVX2 (which AVX2 builds used before).
// - AVX-512 (and, in scalar code, a build without AVX2): float FMA on weights widened in
//   registers, x in float32. The integer kernel was not measured on AVX-512.
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define LLMOS_INT8_BY_INT16 1
#endif
// The integer kernels (int8 through int16 codes, and `int4_linear`) build wherever AVX2, FMA
// and F16C do: an AVX-512 build has them too, for int4, where the race at load (drivers/quant.py)
// finds `int4_linear` beats PyTorch's bfloat16 int4 kernel (and it lets a decode pass's layers
// run in one `decode_layers` call). int8 there keeps the float kernel below.
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LLMOS_INTEGER_KERNELS 1
#endif

#if LLMOS_INTEGER_KERNELS
constexpr int64_t KSTEP = 16;     // int16 lanes of a ymm register
constexpr int64_t ROW_BLOCK = 12;  // weight rows a task takes: tiles of 2, 4 or 1 of them, by the rows of x
constexpr int64_t PREFETCH_AHEAD = 4096;  // bytes: measured against 0, 1 KiB, 8 KiB and a block ahead

// The largest code x is rounded to for inputs of length k: an int32 lane sums ceil(k/16)
// vpmaddwd results, each at most 2 * 128 * code, and must not overflow. (Lanes are summed in
// float, so only a lane's own sum is bounded.) 32767 up to k = 4096, 16383 up to 8192, and so on.
float largest_code(int64_t k) {
  const double pairs = static_cast<double>((k + KSTEP - 1) / KSTEP) * 2.0 * 128.0;
  return static_cast<float>(std::min(32767.0, std::floor(2147483647.0 / std::max(pairs, 1.0))));
}

// x (m, k) float32 -> codes (m, k) int16, at most `top`, and scales (m,): x[r] ~ codes[r] * scales[r].
void round_rows(const float* x, int64_t m, int64_t k, float top, int16_t* codes, float* scales) {
  const int64_t whole = k - k % KSTEP;
  for (int64_t r = 0; r < m; ++r) {
    const float* row = x + r * k;
    int16_t* out = codes + r * k;
    float amax = 0.f;
    for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float inv = amax > 0.f ? top / amax : 0.f;
    scales[r] = amax > 0.f ? amax / top : 0.f;
    const __m256 by = _mm256_set1_ps(inv);
    for (int64_t i = 0; i < whole; i += KSTEP) {  // round to nearest, pack 2x8 int32 to 16 int16 in order
      const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + i), by));
      const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + i + 8), by));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), packed);
    }
    for (int64_t i = whole; i < k; ++i) out[i] = static_cast<int16_t>(std::nearbyint(row[i] * inv));
  }
}

inline __m256i widen_i8(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float hsum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
}

// Eight vectors' lane sums as one vector (vhaddps twice, then the halves added).
inline __m256 sums_of_8(const __m256* v) {
  const __m256 low = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 high = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
}

// A tile leaves each dot as a vector whose lanes sum to it (`Lanes`); a block's are summed
// eight at a time (`lane_sums`): one row's horizontal sum on its own is a chain of dependent
// shuffles, ~20% of a one-row int4 call at SmolLM2's k = 576.
using Lanes = __m256 (*)[ROW_BLOCK];

// out[i] = the lane sum of v[i], for count vectors: eight at a time, then one by one.
inline void lane_sums(const __m256* v, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, sums_of_8(v + i));
  for (; i < count; ++i) out[i] = hsum(v[i]);
}

// The lanes of a block's MB rows summed into dots, after `fill(lanes)` set lanes[r][0, width).
template <int MB, typename Fill>
void summed_into(float (*dots)[ROW_BLOCK], int64_t width, Fill fill) {
  __m256 lanes[MB][ROW_BLOCK];
  fill(lanes);
  for (int r = 0; r < MB; ++r) lane_sums(lanes[r], width, dots[r]);
}

// MB rows of codes (stride k) against TN weight rows from w, into lanes[r][first + j]. One
// accumulator per pair, as in the float kernel.
template <int MB, int TN>
void int16_tile(const int16_t* x, int64_t k, const int8_t* w, Lanes lanes, int64_t first) {
  __m256i acc[MB][TN];
  for (int r = 0; r < MB; ++r)
    for (int j = 0; j < TN; ++j) acc[r][j] = _mm256_setzero_si256();
  const int64_t whole = k - k % KSTEP;
  for (int64_t i = 0; i < whole; i += KSTEP) {
    // Weights come from DRAM: ask for them PREFETCH_AHEAD bytes early. (A block's rows lie
    // end to end, and so do the blocks; a prefetch past w never faults.)
    if (i % 64 == 0) {
      for (int j = 0; j < TN; ++j) __builtin_prefetch(w + j * k + i + PREFETCH_AHEAD);
    }
    for (int j = 0; j < TN; ++j) {
      const __m256i wv = widen_i8(w + j * k + i);
      for (int r = 0; r < MB; ++r) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * k + i));
        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(xv, wv));
      }
    }
  }
  for (int r = 0; r < MB; ++r) {
    for (int j = 0; j < TN; ++j) {
      int32_t rest = 0;
      for (int64_t i = whole; i < k; ++i) rest += static_cast<int32_t>(x[r * k + i]) * w[j * k + i];
      lanes[r][first + j] = _mm256_add_ps(_mm256_cvtepi32_ps(acc[r][j]), _mm256_setr_ps(static_cast<float>(rest), 0.f,
                                                                                         0.f, 0.f, 0.f, 0.f, 0.f, 0.f));
    }
  }
}

// Rows of x rounded to int16 codes (the top code `top`), with a scale each: x[r] ~ codes[r] * scales[r].
struct Codes {
  at::Tensor codes;  // (m, k) int16, from ATen's caching allocator (~120 calls a decode step): not zeroed
  std::vector<float> scales;
  // The codes' data, read once: data_ptr's checks, called for every tile, cost ~15% of a
  // one-row call (SmolLM2's gate_up on 2 cores).
  const int16_t* start = nullptr;
  const int16_t* data() const { return start; }
};

Codes codes_of(const float* x, int64_t m, int64_t k, float top) {
  Codes out{at::empty({m, k}, at::TensorOptions().dtype(at::kShort)), std::vector<float>(static_cast<size_t>(m))};
  out.start = out.codes.data_ptr<int16_t>();
  round_rows(x, m, k, top, out.codes.data_ptr<int16_t>(), out.scales.data());
  return out;
}

// y (m, n) = rows of x against blocks of ROW_BLOCK weight rows, in parallel over the blocks.
// `block(MB, first_row, n0, width, dots)` fills dots[r][j] for MB rows of x from `first_row`
// and the weight rows n0..n0+width; `scale_of(r, n)` turns a dot into y. Tiles of 4, then 2,
// then single rows of x: a block's weights come from DRAM for its first tile and from cache
// for the rest.
template <typename T, typename Block, typename Scale>
void by_row_blocks(int64_t m, int64_t n, int64_t k, T* y, Block block, Scale scale_of) {
  auto store = [&](int64_t first, int64_t rows, int64_t n0, int64_t width, const float (*dots)[ROW_BLOCK]) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < width; ++j) y[(first + r) * n + n0 + j] = T(dots[r][j] * scale_of(first + r, n0 + j));
  };
  const int64_t blocks = (n + ROW_BLOCK - 1) / ROW_BLOCK;
  llmos::Team::split(0, blocks, std::max<int64_t>(1, 1024 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
    float dots[4][ROW_BLOCK];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * ROW_BLOCK, width = std::min(ROW_BLOCK, n - n0);
      int64_t r = 0;
      for (; r + 4 <= m; r += 4) {
        block(std::integral_constant<int, 4>{}, r, n0, width, dots);
        store(r, 4, n0, width, dots);
      }
      for (; r + 2 <= m; r += 2) {
        block(std::integral_constant<int, 2>{}, r, n0, width, dots);
        store(r, 2, n0, width, dots);
      }
      if (r < m) {
        block(std::integral_constant<int, 1>{}, r, n0, width, dots);
        store(r, 1, n0, width, dots);
      }
    }
  });
}

// MB rows against `width` weight rows from n0, TN at a time (4x2, 2x4: what fits AVX2's 16
// registers), then one by one. A single row of x reads one weight row at a time: one stream
// from DRAM, which this machine's prefetchers serve near twice as fast as six side by side
// (Zen 3, 2 cores: 15-20 against 9-11 GB/s).
template <int MB, typename Tile>
void tiles_of_block(int64_t width, Tile tile) {
  constexpr int TN = MB == 4 ? 2 : MB == 2 ? 4 : 1;
  int64_t j = 0;
  for (; j + TN <= width; j += TN) tile(std::integral_constant<int, TN>{}, j);
  for (; j < width; ++j) tile(std::integral_constant<int, 1>{}, j);
}

template <typename T>
void int8_by_int16(const float* x, int64_t m, int64_t k, const int8_t* w, const float* scale, T* y, int64_t n) {
  const Codes xq = codes_of(x, m, k, largest_code(k));
  by_row_blocks<T>(m, n, k, y,
      [&](auto mb, int64_t first, int64_t n0, int64_t width, float (*dots)[ROW_BLOCK]) {
        constexpr int MB = decltype(mb)::value;
        summed_into<MB>(dots, width, [&](Lanes lanes) {
          tiles_of_block<MB>(width, [&](auto tn, int64_t j) {
            int16_tile<MB, decltype(tn)::value>(xq.data() + first * k, k, w + (n0 + j) * k, lanes, j);
          });
        });
      },
      [&](int64_t r, int64_t col) { return xq.scales[r] * scale[col]; });
}

// -- int4 weights ----------------------------------------------------------------------------------------
// Groups of INT4_GROUP weights along k, each with a float16 scale and minimum: w = code * scale
// + minimum, codes 0..15 (asymmetric, as llama.cpp's Q4_1). A row's codes come in blocks of 64
// (32 bytes) whose 16-bit word l holds elements l, 16 + l, 32 + l and 48 + l in its four
// nibbles, lowest first: a mask and three shifts make one block four vectors of 16 int16 codes
// in element order, with no widening or shuffling (drivers/quant.py packs them so). Per group,
// vpmaddwd sums code products in int32 (at most 32 * 32767 * 15: no overflow), converted to
// float and scaled; the minimums' share is sum(minimum * the group's sum of x) per row.
constexpr int64_t INT4_GROUP = 32;
constexpr int64_t INT4_BLOCK = 64;   // elements a 32-byte load unpacks to
constexpr int64_t MAX_GROUPS = 512;  // k up to 16384

// count float16 values -> floats at out: in vectors of 8, the last one ending at the last value
// (overlapping the one before: no scalar tail, and never a read past h's count).
inline void halves_to_floats(const uint16_t* h, int64_t count, float* out) {
  if (count < 8) {
    for (int64_t i = 0; i < count; ++i) out[i] = _cvtsh_ss(h[i]);
    return;
  }
  for (int64_t i = 0; i < count; i += 8) {
    const int64_t at = std::min(i, count - 8);
    _mm256_storeu_ps(out + at, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + at))));
  }
}

// acc plus sum(minimum[g] * sums[g]) over a row's float16 minimums, as lanes (the last few
// groups one by one, into the first lane: a vector load would read past the last row's).
inline __m256 plus_minimums(__m256 acc, const uint16_t* minimums, const float* sums, int64_t groups) {
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 low = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(minimums + g)));
    acc = _mm256_fmadd_ps(low, _mm256_loadu_ps(sums + g), acc);
  }
  float rest = 0.f;
  for (; g < groups; ++g) rest += _cvtsh_ss(minimums[g]) * sums[g];
  return _mm256_add_ps(acc, _mm256_setr_ps(rest, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f));
}

// MB rows of codes (stride k; their group sums `sums`, stride k / INT4_GROUP) against TN packed
// weight rows (`w`, K/2 bytes a row; `sm`, a row's scales then its minimums), into lanes[r][first + j].
// One accumulator a pair, two for a lone pair, so that its FMAs do not wait on each other.
template <int MB, int TN>
void int4_tile(const int16_t* x, const float* sums, int64_t k, const uint8_t* w, const uint16_t* sm,
               Lanes lanes, int64_t first) {
  constexpr int CHAINS = MB * TN == 1 ? 2 : 1;
  const int64_t groups = k / INT4_GROUP, row_bytes = k / 2;
  float scale[TN][MAX_GROUPS];
  for (int j = 0; j < TN; ++j) halves_to_floats(sm + j * 2 * groups, groups, scale[j]);
  __m256 acc[MB][TN][CHAINS];
  for (int r = 0; r < MB; ++r)
    for (int j = 0; j < TN; ++j)
      for (int c = 0; c < CHAINS; ++c) acc[r][j][c] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi16(0x000F);
  for (int64_t b = 0, g = 0; b < row_bytes; b += INT4_BLOCK / 2, g += 2) {
    if (b % 64 == 0) {
      for (int j = 0; j < TN; ++j) __builtin_prefetch(w + j * row_bytes + b + PREFETCH_AHEAD);
    }
    for (int j = 0; j < TN; ++j) {
      const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * row_bytes + b));
      const __m256i c0 = _mm256_and_si256(packed, nibble);
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
      const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(packed, 8), nibble);
      const __m256i c3 = _mm256_srli_epi16(packed, 12);
      const __m256 first_scale = _mm256_broadcast_ss(&scale[j][g]), second_scale = _mm256_broadcast_ss(&scale[j][g + 1]);
      for (int r = 0; r < MB; ++r) {
        const __m256i* xv = reinterpret_cast<const __m256i*>(x + r * k + 2 * b);
        const __m256i one = _mm256_add_epi32(_mm256_madd_epi16(_mm256_loadu_si256(xv), c0),
                                             _mm256_madd_epi16(_mm256_loadu_si256(xv + 1), c1));
        const __m256i two = _mm256_add_epi32(_mm256_madd_epi16(_mm256_loadu_si256(xv + 2), c2),
                                             _mm256_madd_epi16(_mm256_loadu_si256(xv + 3), c3));
        acc[r][j][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(one), first_scale, acc[r][j][0]);
        acc[r][j][CHAINS - 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(two), second_scale, acc[r][j][CHAINS - 1]);
      }
    }
  }
  for (int r = 0; r < MB; ++r) {
    for (int j = 0; j < TN; ++j) {
      __m256 total = acc[r][j][0];
      if constexpr (CHAINS == 2) total = _mm256_add_ps(total, acc[r][j][1]);
      lanes[r][first + j] = plus_minimums(total, sm + j * 2 * groups + groups, sums + r * groups, groups);
    }
  }
}

// Each group's sum of codes, (m, k / INT4_GROUP), exact in float (at most 32 * 32767).
std::vector<float> group_sums(const int16_t* codes, int64_t m, int64_t k) {
  const int64_t groups = k / INT4_GROUP;
  std::vector<float> sums(static_cast<size_t>(m * groups));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      int32_t s = 0;
      for (int64_t i = 0; i < INT4_GROUP; ++i) s += codes[r * k + g * INT4_GROUP + i];
      sums[r * groups + g] = static_cast<float>(s);
    }
  return sums;
}

template <typename T>
void int4_by_int16(const float* x, int64_t m, int64_t k, const uint8_t* w, const uint16_t* sm, T* y, int64_t n) {
  const Codes xq = codes_of(x, m, k, 32767.f);
  const std::vector<float> sums = group_sums(xq.data(), m, k);
  const int64_t groups = k / INT4_GROUP;
  by_row_blocks<T>(m, n, k, y,
      [&](auto mb, int64_t first, int64_t n0, int64_t width, float (*dots)[ROW_BLOCK]) {
        constexpr int MB = decltype(mb)::value;
        summed_into<MB>(dots, width, [&](Lanes lanes) {
          tiles_of_block<MB>(width, [&](auto tn, int64_t j) {
            int4_tile<MB, decltype(tn)::value>(xq.data() + first * k, sums.data() + first * groups, k,
                                               w + (n0 + j) * (k / 2), sm + (n0 + j) * 2 * groups, lanes, j);
          });
        });
      },
      [&](int64_t r, int64_t) { return xq.scales[r]; });
}
#endif  // LLMOS_INTEGER_KERNELS

#if !LLMOS_INT8_BY_INT16
#if defined(__AVX512F__)
using VecF = __m512;
constexpr int64_t LANES = 16;
inline VecF vzero() { return _mm512_setzero_ps(); }
inline VecF vload(const float* p) { return _mm512_loadu_ps(p); }
inline VecF vload_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VecF vfma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(VecF v) { return _mm512_reduce_add_ps(v); }
#else
using VecF = float;
constexpr int64_t LANES = 1;
inline VecF vzero() { return 0.f; }
inline VecF vload(const float* p) { return *p; }
inline VecF vload_i8(const int8_t* p) { return static_cast<float>(*p); }
inline VecF vfma(VecF a, VecF b, VecF c) { return a * b + c; }
inline float vsum(VecF v) { return v; }
#endif

constexpr int64_t TILE_N = 4;  // weight rows widened once per step of k and used by MB rows of x

// MB rows of x (float32, stride k) against TILE_N rows of w, into dots[MB][TILE_N]. Each
// (row, weight row) pair has its own accumulator: independent FMA chains keep the unit busy.
template <int MB>
void int8_tile(const float* x, int64_t k, const int8_t* w, float (*dots)[TILE_N]) {
  VecF acc[MB][TILE_N];
  for (int r = 0; r < MB; ++r)
    for (int j = 0; j < TILE_N; ++j) acc[r][j] = vzero();
  const int64_t whole = k - k % LANES;
  for (int64_t i = 0; i < whole; i += LANES) {
    VecF wv[TILE_N];
    // The next tile's weights, a tile ahead: a model's weights come from DRAM, not the cache.
    // (Past the last tile this names memory beyond w; a prefetch never faults.)
    if (i % 64 == 0) {
      for (int j = 0; j < TILE_N; ++j) __builtin_prefetch(w + (TILE_N + j) * k + i);
    }
    for (int j = 0; j < TILE_N; ++j) wv[j] = vload_i8(w + j * k + i);
    for (int r = 0; r < MB; ++r) {
      const VecF xv = vload(x + r * k + i);
      for (int j = 0; j < TILE_N; ++j) acc[r][j] = vfma(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MB; ++r) {
    for (int j = 0; j < TILE_N; ++j) {
      float dot = vsum(acc[r][j]);
      for (int64_t i = whole; i < k; ++i) dot += x[r * k + i] * static_cast<float>(w[j * k + i]);
      dots[r][j] = dot;
    }
  }
}

// Rows of x taken MAX_MB at a time, then two, then one. AVX-512's 32 vector registers hold
// 4x4 accumulators, 4 weights and x.
constexpr int MAX_MB = LANES == 16 ? 4 : 2;

template <typename T>
void int8_rows(const float* x, int64_t m, int64_t k, const int8_t* w, const float* scale, T* y, int64_t n) {
  const int64_t tiles = n / TILE_N;
  auto store = [&](int64_t first, int64_t n0, int64_t rows, const float (*dots)[TILE_N]) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < TILE_N; ++j) y[(first + r) * n + n0 + j] = T(dots[r][j] * scale[n0 + j]);
  };
  llmos::Team::split(0, tiles, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
    float dots[MAX_MB][TILE_N];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * TILE_N;
      const int8_t* wt = w + n0 * k;
      int64_t r = 0;
      for (; r + MAX_MB <= m; r += MAX_MB) {
        int8_tile<MAX_MB>(x + r * k, k, wt, dots);
        store(r, n0, MAX_MB, dots);
      }
      for (; r + 2 <= m; r += 2) {
        int8_tile<2>(x + r * k, k, wt, dots);
        store(r, n0, 2, dots);
      }
      if (r < m) {
        int8_tile<1>(x + r * k, k, wt, dots);
        store(r, n0, 1, dots);
      }
    }
  });
  for (int64_t n0 = tiles * TILE_N; n0 < n; ++n0) {  // the last n % TILE_N weight rows
    for (int64_t r = 0; r < m; ++r) {
      float dot = 0.f;
      for (int64_t i = 0; i < k; ++i) dot += x[r * k + i] * static_cast<float>(w[n0 * k + i]);
      y[r * n + n0] = T(dot * scale[n0]);
    }
  }
}

#endif  // !LLMOS_INT8_BY_INT16

// y = x w^T * scale by the kernel this build has (above).
template <typename T>
void int8_matmul(const float* x, int64_t m, int64_t k, const int8_t* w, const float* scale, T* y, int64_t n) {
#if LLMOS_INT8_BY_INT16
  int8_by_int16<T>(x, m, k, w, scale, y, n);
#else
  int8_rows<T>(x, m, k, w, scale, y, n);
#endif
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && scale.is_contiguous(), "int8_linear: inputs must be contiguous");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar, "int8_linear: w is (N, K) int8");
  const int64_t n = w.size(0), k = w.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, "int8_linear: x is (M, K) for w (N, K)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == n, "int8_linear: scale is (N,) float32");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "int8_linear: x is float32 or bfloat16");
  const int64_t m = x.size(0);
  const at::Tensor wide = x.to(at::kFloat);  // x itself when float32; else widened once, read by every tile
  auto y = at::empty({m, n}, x.options());
  const float* xs = wide.data_ptr<float>();
  if (x.scalar_type() == at::kFloat) {
    int8_matmul<float>(xs, m, k, w.data_ptr<int8_t>(), scale.data_ptr<float>(), y.data_ptr<float>(), n);
  } else {
    int8_matmul<c10::BFloat16>(xs, m, k, w.data_ptr<int8_t>(), scale.data_ptr<float>(), y.data_ptr<c10::BFloat16>(), n);
  }
  return y;
}

#if LLMOS_INTEGER_KERNELS
// y = x w^T for int4 weights packed as drivers/quant.py's `pack_int4` does: w (N, K/2) uint8,
// scale_min (N, 2 K/32) float16, each row's scales then its minimums.
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale_min) {
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && scale_min.is_contiguous(), "int4_linear: inputs must be contiguous");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte, "int4_linear: w is (N, K/2) uint8");
  const int64_t n = w.size(0), k = w.size(1) * 2;
  TORCH_CHECK(k % INT4_BLOCK == 0 && k / INT4_GROUP <= MAX_GROUPS, "int4_linear: K must be a multiple of 64, at most ",
              MAX_GROUPS * INT4_GROUP);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, "int4_linear: x is (M, K) for w (N, K/2)");
  TORCH_CHECK(scale_min.scalar_type() == at::kHalf && scale_min.dim() == 2 && scale_min.size(0) == n &&
              scale_min.size(1) == 2 * k / INT4_GROUP, "int4_linear: scale_min is (N, 2 K/32) float16");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "int4_linear: x is float32 or bfloat16");
  const int64_t m = x.size(0);
  const at::Tensor wide = x.to(at::kFloat);
  auto y = at::empty({m, n}, x.options());
  const float* xs = wide.data_ptr<float>();
  const auto* sm = reinterpret_cast<const uint16_t*>(scale_min.data_ptr<at::Half>());
  if (x.scalar_type() == at::kFloat) {
    int4_by_int16<float>(xs, m, k, w.data_ptr<uint8_t>(), sm, y.data_ptr<float>(), n);
  } else {
    int4_by_int16<c10::BFloat16>(xs, m, k, w.data_ptr<uint8_t>(), sm, y.data_ptr<c10::BFloat16>(), n);
  }
  return y;
}
#endif

// -- a decode pass's decoder layers in one call (the quantized path) -------------------------------------
// With quantized weights a decode step's layers are small operators; one agent's step spent
// more in calling them from Python than in their arithmetic outside the matmuls. These run
// the same operators in the same order as drivers/llama.py's per-layer path (so the results
// are bitwise that path's), every layer in one call.

// x w^T for a quantized weight: int8 (w (N, K) int8, scale (N,) float32) or, in integer
// builds, int4 (w (N, K/2) uint8, scale (N, 2 K/32) float16).
at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  if (w.scalar_type() == at::kChar) return int8_linear(x, w, scale);
#if LLMOS_INTEGER_KERNELS
  return int4_linear(x, w, scale);
#else
  TORCH_CHECK(false, "decode_layers: int4 weights need the integer kernels (AVX2, FMA and F16C)");
#endif
}

// x w^T for a dense weight: oneDNN-packed, as Projection prepacks it (through PyTorch's mkldnn
// operator, called boxed: it has no C++ header), or plain.
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w) {
  if (!w.is_mkldnn()) return at::linear(x, w);
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{x, w, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(), std::string("")};
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

// A layer projection as decode_layers takes it: (weight, scale), scale empty for a dense weight.
at::Tensor projected(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  return scale.numel() == 0 ? dense_linear(x, w) : quantized_linear(x, w, scale);
}

// hidden (B, H), updated in place: for each layer l, attention then MLP with residuals, as
// LlamaDecoderLayer. norms: 2 a layer (attention's, MLP's); weights: 8 a layer, (weight, scale)
// of qkv, o, gate_up, down, each quantized or dense (`projected`); k_pool, v_pool (layers, N,
// Hkv, ...) as KVPool holds them; the rest as rope_store and decode take them. The MLP's
// activation is SiLU.
void decode_layers(at::Tensor& hidden, at::TensorList norms, at::TensorList weights, double eps, const at::Tensor& cos,
                   const at::Tensor& sin, at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& blocks,
                   const at::Tensor& offsets, const at::Tensor& table, const at::Tensor& lens, int64_t q_heads,
                   double scale) {
  const int64_t layers = static_cast<int64_t>(norms.size()) / 2;
  TORCH_CHECK(hidden.dim() == 2 && hidden.is_contiguous(), "decode_layers: hidden is (B, H), contiguous");
  TORCH_CHECK(static_cast<int64_t>(norms.size()) == 2 * layers && static_cast<int64_t>(weights.size()) == 8 * layers &&
                  k_pool.dim() == 5 && v_pool.dim() == 5 && k_pool.size(0) == layers && v_pool.size(0) == layers,
              "decode_layers: 2 norms and 8 weights a layer, and a K/V pool of as many layers");
  const int64_t batch = hidden.size(0), dim = k_pool.size(3);
  auto pass = [&] {
    for (int64_t l = 0; l < layers; ++l) {
      at::Tensor k = k_pool.select(0, l), v = v_pool.select(0, l);
      const at::Tensor* w = weights.data() + 8 * l;
      const at::Tensor qkv = projected(rms_norm(hidden, norms[2 * l], eps), w[0], w[1]);
      const at::Tensor q = rope_store(qkv.view({batch, -1, dim}), cos, sin, k, v, blocks, offsets, q_heads);
      const at::Tensor attended = paged_decode(q, k, v, table, lens, scale);
      hidden.add_(projected(attended.view({batch, -1}), w[2], w[3]));
      hidden.add_(projected(silu_mul(projected(rms_norm(hidden, norms[2 * l + 1], eps), w[4], w[5])), w[6], w[7]));
    }
  };
  // One team for the whole pass where every operator in it is ours; a dense weight's oneDNN
  // call would run on one thread inside the team (team.h).
  bool all_quantized = true;
  for (size_t i = 1; i < weights.size(); i += 2) all_quantized = all_quantized && weights[i].numel() > 0;
  if (all_quantized) {
    llmos::Team::lead(pass);
  } else {
    pass();
  }
}

// Whether this build multiplies int8 weights in integers (AVX2 without AVX-512: int16 codes).
#if LLMOS_INT8_BY_INT16
bool integer_kernels() { return true; }
#else
bool integer_kernels() { return false; }
#endif

// Whether this build has `int4_linear` (AVX2, FMA and F16C).
#if LLMOS_INTEGER_KERNELS
bool int4_kernel() { return true; }
#else
bool int4_kernel() { return false; }
#endif

}  // namespace

TORCH_LIBRARY(llmos_paged, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.impl("rms_norm", c10::DispatchKey::CPU, TORCH_FN(rms_norm));
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.impl("silu_mul", c10::DispatchKey::CPU, TORCH_FN(silu_mul));
  m.def("rope_store(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k, Tensor(b!) v, Tensor blocks, Tensor offsets, "
        "int q_heads) -> Tensor");
  m.impl("rope_store", c10::DispatchKey::CPU, TORCH_FN(rope_store));
  m.def("decode(Tensor q, Tensor k, Tensor v, Tensor table, Tensor lens, float scale) -> Tensor");
  m.impl("decode", c10::DispatchKey::CPU, TORCH_FN(paged_decode));
  m.def("gather_kv(Tensor k, Tensor v, Tensor table, int length, ScalarType dtype) -> (Tensor, Tensor)");
  m.impl("gather_kv", c10::DispatchKey::CPU, TORCH_FN(gather_kv));
  m.def("lora_add(Tensor(a!) y, Tensor x, Tensor a, Tensor bt, Tensor start, Tensor count) -> ()");
  m.impl("lora_add", c10::DispatchKey::CPU, TORCH_FN(lora_add));
  m.def("int8_linear(Tensor x, Tensor w, Tensor scale) -> Tensor");
  m.impl("int8_linear", c10::DispatchKey::CPU, TORCH_FN(int8_linear));
  m.def("supports(int group, int dim) -> bool", &supports);
  m.def("integer_kernels() -> bool", &integer_kernels);
  m.def("int4_kernel() -> bool", &int4_kernel);
  m.def("decode_layers(Tensor(a!) hidden, Tensor[] norms, Tensor[] weights, float eps, Tensor cos, Tensor sin, "
        "Tensor(b!) k_pool, Tensor(c!) v_pool, Tensor blocks, Tensor offsets, Tensor table, Tensor lens, int q_heads, "
        "float scale) -> ()");
  m.impl("decode_layers", c10::DispatchKey::CPU, TORCH_FN(decode_layers));
  m.impl("decode_layers", c10::DispatchKey::MkldnnCPU, TORCH_FN(decode_layers));  // oneDNN-packed weights among them
#if LLMOS_INTEGER_KERNELS
  m.def("int4_linear(Tensor x, Tensor w, Tensor scale_min) -> Tensor");
  m.impl("int4_linear", c10::DispatchKey::CPU, TORCH_FN(int4_linear));
#endif
}
