// MLX custom primitive "GgufQMatmul": y[..., M, N] = x[..., M, K] . W^T, W = raw GGUF blocks held
// in a uint8 MLX array [N, row_bytes]. CPU only; runs the kernels of qmatmul.cpp inside MLX's
// CPU command encoder so it composes with lazy evaluation and mlx::core::compile.
// "GgufQMatmulMulti": up to 4 such projections of one x in one kernel call (one output each,
// with optional biases), or gate/up with the SwiGLU or GEGLU product (one output), optionally
// after an RMSNorm prologue.
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
// mlx-c's private helpers to unwrap handles (mlx_array / mlx_stream are `struct { void* ctx; }`
// whose ctx is a heap-allocated C++ object). They use std::format: the build force-includes
// mlx_c_compat_format.h where the standard library lacks it.
#include "mlx/c/private/array.h"
#include "mlx/c/private/stream.h"
#include "mlx_engine_kernels.h"
#include "mlx_gather.h"
#include "mlxk_internal.h"

namespace mlxe {
void set_last_error(const std::string& msg);
int qmatmul_checked(const void* w, int type, int64_t n, int64_t k, const float* x, int64_t m, int64_t ldx,
                    float* y, int64_t ldy);
int validate(int type, int64_t n, int64_t k, int64_t* row_bytes);
int qmatmul_t_checked(const void* w, int type, int64_t n, int64_t k, const float* dy, int64_t m, int64_t lddy,
                      float* dx);
void gemm_f32(int64_t batch, int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c);
void cross_entropy_f32(int64_t m, int64_t v, const float* z, const int32_t* t, const float* w, const float* g,
                       float* out);
}  // namespace mlxe

namespace mlx_engine {

namespace mx = mlx::core;

namespace {

// Row view of x[..., M, K] when its last axis is contiguous and the leading axes collapse to a
// single row stride (covers contiguous arrays, row slices and row broadcasts of one row).
bool row_view(const mx::array& x, int64_t* rows, int64_t* row_stride) {
  const int nd = x.ndim();
  const auto& sh = x.shape();
  const auto& st = x.strides();
  *rows = 1;
  for (int i = 0; i + 1 < nd; ++i) *rows *= sh[i];
  if (nd == 0) return false;
  if (sh[nd - 1] > 1 && st[nd - 1] != 1) return false;
  if (nd == 1 || *rows <= 1) {
    *row_stride = sh[nd - 1];
    return true;
  }
  // Find the innermost leading axis with size > 1: its stride is the row stride.
  int64_t rs = -1, expect = 0;
  for (int i = nd - 2; i >= 0; --i) {
    if (sh[i] == 1) continue;
    if (rs < 0) {
      rs = st[i];
      expect = rs * sh[i];
      continue;
    }
    if (st[i] != expect) return false;
    expect *= sh[i];
  }
  if (rs < sh[nd - 1]) return false;  // overlapping rows (e.g. broadcast of many rows) -> copy
  *row_stride = rs;
  return true;
}


// out = x * w / sqrt(mean(x^2) + eps) over one row of k (MLX's rms_norm, in float32).
void rms_norm_row(const float* x, const float* w, int64_t k, float eps, float* out) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * x[i + l];
  float ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < k; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / (float)k + eps);
  for (i = 0; i < k; ++i) out[i] = x[i] * scale * w[i];
}

// What eval_cpu captures of x [..., M, K] to read it on the stream thread: a float32 row view
// read in place, or what is needed to gather it into a contiguous float32 copy.
struct XSource {
  bool direct;
  int64_t rows, ldx;
  const void* p;
  mx::Dtype dtype;
  mx::Shape shape;
  mx::Strides strides;

  XSource(const mx::array& x, int64_t k) : direct(false), rows(0), ldx(0), p(x.data<void>()), dtype(x.dtype()),
                                             shape(x.shape()), strides(x.strides()) {
    direct = x.dtype() == mx::float32 && row_view(x, &rows, &ldx);
    if (!direct) {
      rows = 1;
      for (size_t i = 0; i + 1 < x.ndim(); ++i) rows *= x.shape(i);
      ldx = k;
    }
  }

  // The f32 rows (in place, or gathered into buf).
  const float* data(int64_t k, std::vector<float>& buf) const {
    if (direct) return (const float*)p;
    buf.resize((size_t)(rows * k));
    gather_any(buf.data());
    return buf.data();
  }

  void gather_any(float* dst) const {
    if (dtype == mx::float32)
      gather_to_f32((const float*)p, shape, strides, dst);
    else if (dtype == mx::float16)
      gather_to_f32((const mx::float16_t*)p, shape, strides, dst);
    else
      gather_to_f32((const mx::bfloat16_t*)p, shape, strides, dst);
  }
};

// The same for the uint8 weight blocks (normally a contiguous buffer read in place).
struct WSource {
  bool contiguous;
  const void* p;
  mx::Shape shape;
  mx::Strides strides;

  explicit WSource(const mx::array& w)
      : contiguous(w.flags().row_contiguous), p(w.data<void>()), shape(w.shape()), strides(w.strides()) {}

  const uint8_t* data(std::vector<uint8_t>& buf) const {
    if (contiguous) return (const uint8_t*)p;
    // defensive: weights are normally a contiguous (mmap-backed) buffer
    int64_t total = 1;
    for (auto s : shape) total *= s;
    buf.resize((size_t)total);
    std::vector<float> tmp((size_t)total);
    gather_to_f32((const uint8_t*)p, shape, strides, tmp.data());
    for (int64_t i = 0; i < total; ++i) buf[(size_t)i] = (uint8_t)tmp[(size_t)i];
    return buf.data();
  }
};

// A bias input: float32 read in place when contiguous, else gathered.
struct BSource {
  bool present, contiguous;
  const void* p;
  mx::Shape shape;
  mx::Strides strides;

  explicit BSource(const mx::array* b)
      : present(b != nullptr),
        contiguous(b && b->flags().row_contiguous),
        p(b ? b->data<void>() : nullptr),
        shape(b ? b->shape() : mx::Shape{}),
        strides(b ? b->strides() : mx::Strides{}) {}

  const float* data(std::vector<float>& buf) const {
    if (!present) return nullptr;
    if (contiguous) return (const float*)p;
    int64_t total = 1;
    for (auto s : shape) total *= s;
    buf.resize((size_t)total);
    gather_to_f32((const float*)p, shape, strides, buf.data());
    return buf.data();
  }
};

}  // namespace

class GgufQMatmul : public mx::UnaryPrimitive {
 public:
  GgufQMatmul(mx::Stream s, int type, int64_t n, int64_t k, bool has_residual)
      : mx::UnaryPrimitive(s), type_(type), n_(n), k_(k), has_residual_(has_residual) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) enc.set_input_array(in);
    enc.set_output_array(out);

    const XSource xs(x, k_);
    const WSource wsrc(w);
    // The residual [..., M, N] read like x (rows of N).
    const XSource rs = has_residual_ ? XSource(inputs[2], n_) : XSource(x, k_);
    const bool add = has_residual_;
    const int type = type_;
    const int64_t n = n_, k = k_;
    float* y = out.data<float>();
    enc.dispatch([=]() {
      try {
        std::vector<float> xbuf;
        const float* xf = xs.data(k, xbuf);
        std::vector<uint8_t> wbuf;
        const uint8_t* wf = wsrc.data(wbuf);
        const int rc = mlxe::qmatmul_checked(wf, type, n, k, xf, xs.rows, xs.ldx, y, n);
        if (rc) std::fprintf(stderr, "GgufQMatmul: kernel error %d: %s\n", rc, mlxk_last_error());
        if (add) {
          std::vector<float> rbuf;
          const float* r = rs.data(n, rbuf);
          for (int64_t m = 0; m < xs.rows; ++m)
            for (int64_t j = 0; j < n; ++j) y[m * n + j] += r[m * rs.ldx + j];
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "GgufQMatmul: %s\n", e.what());
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(
        "GgufQMatmul has no GPU implementation: evaluate it on a CPU stream "
        "(e.g. mlx_default_cpu_stream_new())");
  }

  // The weight is frozen: for y = x . W^T (+ r), dx = dy . W (GgufQMatmulT over the same
  // blocks) and dr = dy. A gradient with respect to the blocks themselves is refused.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    std::vector<mx::array> grads;
    for (int a : argnums) {
      if (a == 0) {
        mx::array dx = input_grad(cotangents[0], primals[1]);  // [..., M, N] . [N, K]
        grads.push_back(dx.dtype() == primals[0].dtype() ? dx : mx::astype(dx, primals[0].dtype(), stream()));
      } else if (a == 2) {
        const mx::array& r = primals[2];
        grads.push_back(r.dtype() == mx::float32 ? cotangents[0] : mx::astype(cotangents[0], r.dtype(), stream()));
      } else {
        throw std::invalid_argument("GgufQMatmul: the GGUF weight blocks are frozen and have no gradient");
      }
    }
    return grads;
  }

  const char* name() const override { return "GgufQMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GgufQMatmul*>(&other);
    return o && o->type_ == type_ && o->n_ == n_ && o->k_ == k_ && o->has_residual_ == has_residual_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape s = inputs[0].shape();
    s.back() = (int32_t)n_;
    return {s};
  }

  int type() const { return type_; }

 private:
  // dy [..., M, N] . W as a float32 [..., M, K] array (lazy).
  mx::array input_grad(const mx::array& dy, const mx::array& w);

  int type_;
  int64_t n_, k_;
  bool has_residual_;
};

// dx [..., M, K] = dy [..., M, N] . W for W [N, row_bytes] uint8 GGUF blocks: GgufQMatmul's
// backward with respect to x (mlxe::qmatmul_t_checked, backward.cpp), reading the blocks in
// place as the forward does.
class GgufQMatmulT : public mx::UnaryPrimitive {
 public:
  GgufQMatmulT(mx::Stream s, int type, int64_t n, int64_t k) : mx::UnaryPrimitive(s), type_(type), n_(n), k_(k) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) enc.set_input_array(in);
    enc.set_output_array(out);
    const XSource ds(inputs[0], n_);
    const WSource wsrc(inputs[1]);
    float* dx = out.data<float>();
    enc.dispatch([=, type = type_, n = n_, k = k_]() {
      try {
        std::vector<float> dbuf;
        const float* d = ds.data(n, dbuf);
        std::vector<uint8_t> wbuf;
        const uint8_t* wf = wsrc.data(wbuf);
        const int rc = mlxe::qmatmul_t_checked(wf, type, n, k, d, ds.rows, ds.ldx, dx);
        if (rc) std::fprintf(stderr, "GgufQMatmulT: kernel error %d: %s\n", rc, mlxk_last_error());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "GgufQMatmulT: %s\n", e.what());
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("GgufQMatmulT has no GPU implementation: evaluate it on a CPU stream");
  }

  const char* name() const override { return "GgufQMatmulT"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GgufQMatmulT*>(&other);
    return o && o->type_ == type_ && o->n_ == n_ && o->k_ == k_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape s = inputs[0].shape();
    s.back() = (int32_t)k_;
    return {s};
  }

 private:
  int type_;
  int64_t n_, k_;
};

// c [..., M, N] = a [..., M, K] . b [..., K, N] in float32 (mlxe::gemm_f32, gemm.cpp), the
// leading axes equal; differentiable (its vjp is two more of itself).
class F32Matmul : public mx::UnaryPrimitive {
 public:
  explicit F32Matmul(mx::Stream s) : mx::UnaryPrimitive(s) {}

  // The product of a and b as an array of this primitive (inputs made float32 and contiguous).
  static mx::array make(mx::array a, mx::array b, mx::Stream s) {
    if (a.ndim() < 2 || a.ndim() != b.ndim())
      throw std::invalid_argument("matmul_f32: a and b need the same rank, at least 2");
    for (size_t i = 0; i + 2 < a.ndim(); ++i)
      if (a.shape(i) != b.shape(i)) throw std::invalid_argument("matmul_f32: the leading axes must be equal");
    if (a.shape(-1) != b.shape(-2))
      throw std::invalid_argument("matmul_f32: a is [..., M, " + std::to_string(a.shape(-1)) + "], b is [..., " +
                                  std::to_string(b.shape(-2)) + ", N]");
    if (a.dtype() != mx::float32) a = mx::astype(a, mx::float32, s);
    if (b.dtype() != mx::float32) b = mx::astype(b, mx::float32, s);
    a = mx::contiguous(a, false, s);
    b = mx::contiguous(b, false, s);
    mx::Shape shape = a.shape();
    shape.back() = b.shape(-1);
    return mx::array(std::move(shape), mx::float32, std::make_shared<F32Matmul>(s), {a, b});
  }

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) enc.set_input_array(in);
    enc.set_output_array(out);
    const XSource as(inputs[0], inputs[0].shape(-1)), bs(inputs[1], inputs[1].shape(-1));
    const bool a_plain = inputs[0].flags().row_contiguous, b_plain = inputs[1].flags().row_contiguous;
    const int64_t m = inputs[0].shape(-2), k = inputs[0].shape(-1), n = inputs[1].shape(-1);
    const int64_t batch = m * k > 0 ? (int64_t)inputs[0].size() / (m * k) : 0;
    float* c = out.data<float>();
    enc.dispatch([=]() {
      try {
        // Inputs are made contiguous at graph build; gathered here only defensively.
        std::vector<float> abuf, bbuf;
        const float* a = (const float*)as.p;
        const float* b = (const float*)bs.p;
        if (!a_plain) {
          abuf.resize((size_t)(batch * m * k));
          as.gather_any(abuf.data());
          a = abuf.data();
        }
        if (!b_plain) {
          bbuf.resize((size_t)(batch * k * n));
          bs.gather_any(bbuf.data());
          b = bbuf.data();
        }
        mlxe::gemm_f32(batch, m, n, k, a, b, c);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "F32Matmul: %s\n", e.what());
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("F32Matmul has no GPU implementation: evaluate it on a CPU stream");
  }

  // dA = dC . B^T, dB = A^T . dC.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    std::vector<mx::array> grads;
    const int nd = (int)primals[0].ndim();
    for (int i : argnums) {
      if (i == 0)
        grads.push_back(make(cotangents[0], mx::swapaxes(primals[1], nd - 1, nd - 2, stream()), stream()));
      else
        grads.push_back(make(mx::swapaxes(primals[0], nd - 1, nd - 2, stream()), cotangents[0], stream()));
    }
    return grads;
  }

  const char* name() const override { return "F32Matmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return dynamic_cast<const F32Matmul*>(&other) != nullptr;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape s = inputs[0].shape();
    s.back() = inputs[1].shape(-1);
    return {s};
  }
};

// Weighted cross-entropy of logits z [M, V] against targets t [M] (int32) with weights w [M]
// (float32): loss [M] (mlxe::cross_entropy_f32, cross_entropy.cpp); with a fourth input, the
// cotangent g [M], it is the backward instead: dz [M, V]. Inputs are contiguous (made so at
// graph build).
class CrossEntropy : public mx::UnaryPrimitive {
 public:
  CrossEntropy(mx::Stream s, bool backward) : mx::UnaryPrimitive(s), backward_(backward) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) enc.set_input_array(in);
    enc.set_output_array(out);
    const int64_t m = inputs[0].shape(0), v = inputs[0].shape(1);
    const float* z = inputs[0].data<float>();
    const int32_t* t = inputs[1].data<int32_t>();
    const float* w = inputs[2].data<float>();
    const float* g = backward_ ? inputs[3].data<float>() : nullptr;
    float* o = out.data<float>();
    enc.dispatch([=]() { mlxe::cross_entropy_f32(m, v, z, t, w, g, o); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("CrossEntropy has no GPU implementation: evaluate it on a CPU stream");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    if (backward_) throw std::invalid_argument("CrossEntropy: no second derivative");
    std::vector<mx::array> grads;
    for (int a : argnums) {
      if (a != 0) throw std::invalid_argument("CrossEntropy: only the logits have a gradient");
      mx::array g = mx::contiguous(mx::astype(cotangents[0], mx::float32, stream()), false, stream());
      grads.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<CrossEntropy>(stream(), true),
                                {primals[0], primals[1], primals[2], g}));
    }
    return grads;
  }

  const char* name() const override { return backward_ ? "CrossEntropyVjp" : "CrossEntropy"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const CrossEntropy*>(&other);
    return o && o->backward_ == backward_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    if (backward_) return {inputs[0].shape()};
    return {mx::Shape{inputs[0].shape(0)}};
  }

 private:
  bool backward_;
};

mx::array GgufQMatmul::input_grad(const mx::array& dy, const mx::array& w) {
  mx::Shape s = dy.shape();
  s.back() = (int32_t)k_;
  return mx::array(std::move(s), mx::float32, std::make_shared<GgufQMatmulT>(stream(), type_, n_, k_), {dy, w});
}

// Up to 4 projections of one x in one kernel call (mlxe::qmatmul_multi_checked). Inputs:
// x, the `count` weight block arrays, then the biases of the weights that have one (float32
// [n_i], any strides). Outputs: one [..., M, n_i] per weight, or one [..., M, n] for SWIGLU.
class GgufQMatmulMulti : public mx::Primitive {
 public:
  GgufQMatmulMulti(mx::Stream s, std::vector<int> types, std::vector<int64_t> ns, std::vector<bool> has_bias,
                   int64_t k, int epilogue, bool has_norm, float eps)
      : mx::Primitive(s),
        types_(std::move(types)),
        ns_(std::move(ns)),
        has_bias_(std::move(has_bias)),
        k_(k),
        epilogue_(epilogue),
        has_norm_(has_norm),
        eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const int count = (int)types_.size();
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) enc.set_input_array(in);
    std::array<float*, mlxe::kMaxMultiWeights> ys{};
    for (size_t i = 0; i < outputs.size(); ++i) {
      outputs[i].set_data(mx::allocator::malloc(outputs[i].nbytes()));
      enc.set_output_array(outputs[i]);
      ys[i] = outputs[i].data<float>();
    }
    // Types and sizes now; data pointers (in place or gathered copies) in the task.
    std::array<mlxe::MultiWeight, mlxe::kMaxMultiWeights> mw{};
    std::vector<WSource> wsrc;
    std::vector<BSource> bsrc;
    size_t next_bias = (size_t)count + 1;
    for (int i = 0; i < count; ++i) {
      mw[(size_t)i] = mlxe::MultiWeight{nullptr, types_[(size_t)i], ns_[(size_t)i], nullptr};
      wsrc.emplace_back(inputs[(size_t)i + 1]);
      bsrc.emplace_back(has_bias_[(size_t)i] ? &inputs[next_bias++] : nullptr);
    }
    // The RMSNorm weight [K], last input (float32, contiguous: made so at graph build).
    const float* norm_w = has_norm_ ? inputs.back().data<float>() : nullptr;
    enc.dispatch([xs = XSource(inputs[0], k_), wsrc = std::move(wsrc), bsrc = std::move(bsrc), mw, ys, count,
                  k = k_, epilogue = epilogue_, norm_w, eps = eps_]() mutable {
      try {
        std::vector<float> xbuf, xnorm;
        const float* xf = xs.data(k, xbuf);
        int64_t ldx = xs.ldx;
        if (norm_w) {
          xnorm.resize((size_t)(xs.rows * k));
          for (int64_t m = 0; m < xs.rows; ++m) rms_norm_row(xf + m * ldx, norm_w, k, eps, xnorm.data() + m * k);
          xf = xnorm.data();
          ldx = k;
        }
        std::vector<uint8_t> wbufs[mlxe::kMaxMultiWeights];
        std::vector<float> bbufs[mlxe::kMaxMultiWeights];
        for (size_t i = 0; i < (size_t)count; ++i) {
          mw[i].w = wsrc[i].data(wbufs[i]);
          mw[i].bias = bsrc[i].data(bbufs[i]);
        }
        const int rc =
            mlxe::qmatmul_multi_checked(xf, xs.rows, ldx, k, mw.data(), count, epilogue, ys.data());
        if (rc) std::fprintf(stderr, "GgufQMatmulMulti: kernel error %d: %s\n", rc, mlxk_last_error());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "GgufQMatmulMulti: %s\n", e.what());
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(
        "GgufQMatmulMulti has no GPU implementation: evaluate it on a CPU stream "
        "(e.g. mlx_default_cpu_stream_new())");
  }

  const char* name() const override { return "GgufQMatmulMulti"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GgufQMatmulMulti*>(&other);
    return o && o->types_ == types_ && o->ns_ == ns_ && o->has_bias_ == has_bias_ && o->k_ == k_ &&
           o->epilogue_ == epilogue_ && o->has_norm_ == has_norm_ && o->eps_ == eps_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return shapes_for(inputs[0].shape(), ns_, epilogue_);
  }

  // The output shapes for x of shape `x` ([..., M, K]): [..., M, n_i] per weight, or one
  // [..., M, n] for SWIGLU.
  static std::vector<mx::Shape> shapes_for(const mx::Shape& x, const std::vector<int64_t>& ns, int epilogue) {
    std::vector<mx::Shape> out;
    const size_t nout = epilogue == MLXK_EPILOGUE_NONE ? ns.size() : 1;
    for (size_t i = 0; i < nout; ++i) {
      mx::Shape s = x;
      s.back() = (int32_t)ns[i];
      out.push_back(std::move(s));
    }
    return out;
  }

 private:
  std::vector<int> types_;
  std::vector<int64_t> ns_;
  std::vector<bool> has_bias_;
  int64_t k_;
  int epilogue_;
  bool has_norm_;
  float eps_;
};

}  // namespace mlx_engine

namespace mlx_engine {
namespace {

// Weights live in an arena of anonymous mappings of our own, 2 MiB aligned and advised to use
// transparent huge pages (MADV_HUGEPAGE; env MLX_ENGINE_HUGEPAGES=0 turns the advice off): the
// decode step streams every weight once per token, and with 4 KiB pages that stream crosses a
// page (a TLB miss and a stop of the hardware prefetcher) every 4 KiB. Tensors are placed one
// after the other in load order (the order a forward pass reads them) in chunks of 64 MiB; a
// tensor holds its chunk alive, and the chunk is unmapped with the last of its tensors.
std::atomic<int64_t> g_arena_bytes{0};  // bytes of live chunks

struct Chunk {
  uint8_t* base = nullptr;
  size_t len = 0;
  size_t used = 0;
  ~Chunk() {
    if (base) {
      munmap(base, len);
      g_arena_bytes.fetch_sub((int64_t)len);
    }
  }
};

class WeightArena {
 public:
  static constexpr size_t kHuge = size_t(2) << 20;
  static constexpr size_t kChunk = size_t(64) << 20;
  static constexpr size_t kAlign = 64;

  // A buffer of `bytes` for an MLX array: Buffer{p} with MLX's CPU layout (an 8-byte size
  // header at p, the data at p + 8, 64-byte aligned) and the chunk that backs it.
  std::pair<mx::allocator::Buffer, std::shared_ptr<Chunk>> alloc(size_t bytes) {
    const size_t need = kAlign + round_up(bytes, kAlign);  // the header sits in the pad before
    std::lock_guard<std::mutex> lock(m_);
    std::shared_ptr<Chunk> c = cur_.lock();
    if (!c || c->used + need > c->len) {
      c = map_chunk(need > kChunk ? round_up(need, kHuge) : kChunk);
      if (need <= kChunk) cur_ = c;
    }
    uint8_t* data = c->base + c->used + kAlign;
    c->used += need;
    uint8_t* header = data - sizeof(size_t);
    const size_t size = bytes;
    std::memcpy(header, &size, sizeof size);
    return {mx::allocator::Buffer(header), c};
  }

 private:
  static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

  static std::shared_ptr<Chunk> map_chunk(size_t len) {
    // Over-map by one huge page to place the chunk on a 2 MiB boundary.
    const size_t span = len + kHuge;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    uint8_t* p = (uint8_t*)raw;
    uint8_t* aligned = (uint8_t*)round_up((size_t)p, kHuge);
    if (aligned > p) munmap(p, (size_t)(aligned - p));
    const size_t tail = (size_t)(p + span - (aligned + len));
    if (tail) munmap(aligned + len, tail);
    static const bool huge = [] {
      const char* v = std::getenv("MLX_ENGINE_HUGEPAGES");
      return !(v && std::string(v) == "0");
    }();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(aligned, len, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    auto c = std::make_shared<Chunk>();
    c->base = aligned;
    c->len = len;
    g_arena_bytes.fetch_add((int64_t)len);
    return c;
  }

  std::mutex m_;
  std::weak_ptr<Chunk> cur_;
};

WeightArena& weight_arena() {
  static WeightArena* a = new WeightArena();  // leaked: arrays may outlive static destruction
  return *a;
}

}  // namespace
}  // namespace mlx_engine

extern "C" int64_t mlxk_weight_arena_bytes(void) { return mlx_engine::g_arena_bytes.load(); }

extern "C" int mlxk_weight_array(mlx_array* res, const void* src, int ggml_type, int64_t n, int64_t k,
                                 int* out_type) {
  namespace mx = mlx::core;
  try {
    if (!res || !src || !out_type) {
      mlxe::set_last_error("mlxk_weight_array: null pointer argument");
      return 1;
    }
    int64_t rb = 0;
    if (mlxe::validate(ggml_type, n, k, &rb) != 0) {
      mlxe::set_last_error(std::string("mlxk_weight_array: ") + mlxk_last_error());
      return 1;
    }
    if (n < 1 || n > INT32_MAX || rb > INT32_MAX)
      throw std::invalid_argument("n=" + std::to_string(n) + " rows of " + std::to_string(rb) +
                                  " bytes do not fit an MLX shape");
    // A fresh buffer that this array alone owns: filling it before anyone reads it is safe.
    auto [buf, chunk] = mlx_engine::weight_arena().alloc((size_t)(n * rb));
    mx::array out(buf, {(int)n, (int)rb}, mx::uint8, [chunk = std::move(chunk)](mx::allocator::Buffer) {});
    if (mlxk_repack_rows(src, ggml_type, n, k, out.data<uint8_t>(), out_type) != 0)
      throw std::runtime_error(mlxk_last_error());
    mlx_array_set_(*res, std::move(out));
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_weight_array: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_weight_array: unknown exception");
  }
  return 1;
}

extern "C" int mlxk_gguf_qmatmul(mlx_array* res, const mlx_array x, const mlx_array w, int ggml_type, int64_t n,
                                 int64_t k, const mlx_stream s) {
  return mlxk_gguf_qmatmul_add(res, x, w, mlx_array{nullptr}, ggml_type, n, k, s);
}

extern "C" int mlxk_gguf_qmatmul_add(mlx_array* res, const mlx_array x, const mlx_array w, const mlx_array residual,
                                     int ggml_type, int64_t n, int64_t k, const mlx_stream s) {
  namespace mx = mlx::core;
  try {
    if (!res) {
      mlxe::set_last_error("mlxk_gguf_qmatmul: null result pointer");
      return 1;
    }
    int64_t rb = 0;
    if (mlxe::validate(ggml_type, n, k, &rb) != 0) {
      mlxe::set_last_error(std::string("mlxk_gguf_qmatmul: ") + mlxk_last_error());
      return 1;
    }
    const mx::array& xa = mlx_array_get_(x);
    mx::array wa = mlx_array_get_(w);
    const mx::Stream st = mlx_stream_get_(s);
    if (st.device.type != mx::Device::cpu)
      throw std::invalid_argument("GgufQMatmul runs on CPU streams only (got a GPU stream)");
    if (xa.ndim() < 1 || xa.shape(-1) != k)
      throw std::invalid_argument("x must have shape [..., M, K] with K = " + std::to_string(k));
    if (xa.dtype() != mx::float32 && xa.dtype() != mx::float16 && xa.dtype() != mx::bfloat16)
      throw std::invalid_argument("x must be float32, float16 or bfloat16");
    if (wa.dtype() != mx::uint8) throw std::invalid_argument("w must be a uint8 array of raw GGUF blocks");
    if (n > INT32_MAX || rb > INT32_MAX) throw std::invalid_argument("n or row bytes too large for an MLX shape");
    if ((int64_t)wa.size() != n * rb)
      throw std::invalid_argument("w has " + std::to_string(wa.size()) + " bytes, expected N*row_bytes = " +
                                  std::to_string(n) + "*" + std::to_string(rb));
    if (wa.ndim() != 2 || wa.shape(0) != n || wa.shape(1) != rb) wa = mx::reshape(wa, {(int)n, (int)rb}, st);
    mx::Shape out_shape = xa.shape();
    out_shape.back() = (int32_t)n;
    std::vector<mx::array> inputs{xa, wa};
    if (residual.ctx) {
      const mx::array& r = mlx_array_get_(residual);
      if (r.shape() != out_shape)
        throw std::invalid_argument("the residual must have the output's shape [..., M, N] with N = " +
                                    std::to_string(n));
      if (r.dtype() != mx::float32 && r.dtype() != mx::float16 && r.dtype() != mx::bfloat16)
        throw std::invalid_argument("the residual must be float32, float16 or bfloat16");
      inputs.push_back(r);
    }
    mx::array out(std::move(out_shape), mx::float32,
                  std::make_shared<mlx_engine::GgufQMatmul>(st, ggml_type, n, k, residual.ctx != nullptr),
                  std::move(inputs));
    mlx_array_set_(*res, std::move(out));
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_gguf_qmatmul: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_gguf_qmatmul: unknown exception");
  }
  return 1;
}

extern "C" int mlxk_gguf_qmatmul_multi(mlx_array* res, const mlx_array x, const mlx_array* ws, const int* types,
                                       const int64_t* ns, const mlx_array* biases, int count, int64_t k,
                                       int epilogue, const mlx_stream s) {
  return mlxk_gguf_qmatmul_multi_norm(res, x, mlx_array{nullptr}, 0.0f, ws, types, ns, biases, count, k, epilogue, s);
}

extern "C" int mlxk_gguf_qmatmul_multi_norm(mlx_array* res, const mlx_array x, const mlx_array norm_weight,
                                            float norm_eps, const mlx_array* ws, const int* types, const int64_t* ns,
                                            const mlx_array* biases, int count, int64_t k, int epilogue,
                                            const mlx_stream s) {
  namespace mx = mlx::core;
  try {
    if (!res || !ws || !types || !ns) {
      mlxe::set_last_error("mlxk_gguf_qmatmul_multi: null pointer argument");
      return 1;
    }
    if (count < 1 || count > MLXK_MAX_MULTI_WEIGHTS) {
      mlxe::set_last_error("mlxk_gguf_qmatmul_multi: count=" + std::to_string(count) +
                           " weights; a fused call takes 1 to " + std::to_string(MLXK_MAX_MULTI_WEIGHTS));
      return 1;
    }
    // The validation only looks at whether a bias is present; the data is bound at evaluation.
    static const float kPresent = 0.0f;
    mlxe::MultiWeight mw[mlxe::kMaxMultiWeights];
    for (int i = 0; i < count; ++i)
      mw[i] = mlxe::MultiWeight{nullptr, types[i], ns[i], biases && biases[i].ctx ? &kPresent : nullptr};
    if (mlxe::validate_multi(mw, count, k, epilogue) != 0) {
      mlxe::set_last_error(std::string("mlxk_gguf_qmatmul_multi: ") + mlxk_last_error());
      return 1;
    }
    const mx::array& xa = mlx_array_get_(x);
    const mx::Stream st = mlx_stream_get_(s);
    if (st.device.type != mx::Device::cpu)
      throw std::invalid_argument("GgufQMatmulMulti runs on CPU streams only (got a GPU stream)");
    if (xa.ndim() < 1 || xa.shape(-1) != k)
      throw std::invalid_argument("x must have shape [..., M, K] with K = " + std::to_string(k));
    if (xa.dtype() != mx::float32 && xa.dtype() != mx::float16 && xa.dtype() != mx::bfloat16)
      throw std::invalid_argument("x must be float32, float16 or bfloat16");
    std::vector<mx::array> inputs{xa};
    std::vector<mx::array> bias_inputs;
    std::vector<int> tv;
    std::vector<int64_t> nv;
    std::vector<bool> has_bias;
    for (int i = 0; i < count; ++i) {
      const std::string which = "weight " + std::to_string(i) + ": ";
      int64_t rb = 0;
      mlxe::validate(types[i], ns[i], k, &rb);
      const int64_t n = ns[i];
      mx::array wa = mlx_array_get_(ws[i]);
      if (wa.dtype() != mx::uint8)
        throw std::invalid_argument(which + "w must be a uint8 array of raw GGUF blocks");
      if (n > INT32_MAX || rb > INT32_MAX)
        throw std::invalid_argument(which + "n or row bytes too large for an MLX shape");
      if ((int64_t)wa.size() != n * rb)
        throw std::invalid_argument(which + "w has " + std::to_string(wa.size()) +
                                    " bytes, expected N*row_bytes = " + std::to_string(n) + "*" +
                                    std::to_string(rb));
      if (wa.ndim() != 2 || wa.shape(0) != n || wa.shape(1) != rb) wa = mx::reshape(wa, {(int)n, (int)rb}, st);
      inputs.push_back(std::move(wa));
      tv.push_back(types[i]);
      nv.push_back(n);
      has_bias.push_back(mw[i].bias != nullptr);
      if (mw[i].bias) {
        mx::array b = mlx_array_get_(biases[i]);
        if (b.dtype() != mx::float32 && b.dtype() != mx::float16 && b.dtype() != mx::bfloat16)
          throw std::invalid_argument(which + "the bias must be float32, float16 or bfloat16");
        if ((int64_t)b.size() != n)
          throw std::invalid_argument(which + "the bias has " + std::to_string(b.size()) +
                                      " elements, expected N = " + std::to_string(n));
        if (b.dtype() != mx::float32) b = mx::astype(b, mx::float32, st);
        if (b.ndim() != 1) b = mx::reshape(b, {(int)n}, st);
        bias_inputs.push_back(std::move(b));
      }
    }
    for (auto& b : bias_inputs) inputs.push_back(std::move(b));
    if (norm_weight.ctx) {
      mx::array nw = mlx_array_get_(norm_weight);
      if (nw.dtype() != mx::float32 && nw.dtype() != mx::float16 && nw.dtype() != mx::bfloat16)
        throw std::invalid_argument("the norm weight must be float32, float16 or bfloat16");
      if ((int64_t)nw.size() != k)
        throw std::invalid_argument("the norm weight has " + std::to_string(nw.size()) +
                                    " elements, expected K = " + std::to_string(k));
      if (!(norm_eps >= 0.0f)) throw std::invalid_argument("the norm epsilon must be >= 0");
      if (nw.dtype() != mx::float32) nw = mx::astype(nw, mx::float32, st);
      if (nw.ndim() != 1) nw = mx::reshape(nw, {(int)k}, st);
      // The task reads it as one contiguous row.
      inputs.push_back(mx::contiguous(nw, false, st));
    }
    auto shapes = mlx_engine::GgufQMatmulMulti::shapes_for(xa.shape(), nv, epilogue);
    const std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
    auto prim = std::make_shared<mlx_engine::GgufQMatmulMulti>(st, std::move(tv), std::move(nv),
                                                               std::move(has_bias), k, epilogue,
                                                               norm_weight.ctx != nullptr, norm_eps);
    std::vector<mx::array> outs = mx::array::make_arrays(std::move(shapes), dtypes, prim, inputs);
    for (size_t i = 0; i < outs.size(); ++i) mlx_array_set_(res[i], std::move(outs[i]));
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_gguf_qmatmul_multi: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_gguf_qmatmul_multi: unknown exception");
  }
  return 1;
}

extern "C" int mlxk_matmul_f32(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s) {
  namespace mx = mlx::core;
  try {
    if (!res) {
      mlxe::set_last_error("mlxk_matmul_f32: null result pointer");
      return 1;
    }
    const mx::Stream st = mlx_stream_get_(s);
    if (st.device.type != mx::Device::cpu)
      throw std::invalid_argument("F32Matmul runs on CPU streams only (got a GPU stream)");
    mlx_array_set_(*res, mlx_engine::F32Matmul::make(mlx_array_get_(a), mlx_array_get_(b), st));
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_matmul_f32: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_matmul_f32: unknown exception");
  }
  return 1;
}

extern "C" int mlxk_cross_entropy(mlx_array* res, const mlx_array logits, const mlx_array targets,
                                  const mlx_array weights, const mlx_stream s) {
  namespace mx = mlx::core;
  try {
    if (!res) {
      mlxe::set_last_error("mlxk_cross_entropy: null result pointer");
      return 1;
    }
    const mx::Stream st = mlx_stream_get_(s);
    if (st.device.type != mx::Device::cpu)
      throw std::invalid_argument("CrossEntropy runs on CPU streams only (got a GPU stream)");
    mx::array z = mlx_array_get_(logits), t = mlx_array_get_(targets), w = mlx_array_get_(weights);
    if (z.ndim() != 2 || t.ndim() != 1 || w.ndim() != 1 || t.shape(0) != z.shape(0) || w.shape(0) != z.shape(0))
      throw std::invalid_argument("logits must be [M, V] with targets and weights [M]");
    if (!mx::issubdtype(t.dtype(), mx::integer)) throw std::invalid_argument("targets must be integers");
    z = mx::contiguous(mx::astype(z, mx::float32, st), false, st);
    t = mx::contiguous(mx::astype(t, mx::int32, st), false, st);
    w = mx::contiguous(mx::astype(w, mx::float32, st), false, st);
    mx::Shape shape{z.shape(0)};
    mlx_array_set_(*res, mx::array(std::move(shape), mx::float32,
                                   std::make_shared<mlx_engine::CrossEntropy>(st, false), {z, t, w}));
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_cross_entropy: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_cross_entropy: unknown exception");
  }
  return 1;
}
