// MLX custom primitive "GgufQMatmul": y[..., M, N] = x[..., M, K] . W^T, W = raw GGUF blocks held
// in a uint8 MLX array [N, row_bytes]. CPU only; runs the kernels of qmatmul.cpp inside MLX's
// CPU command encoder so it composes with lazy evaluation and mlx::core::compile.
#include <cstdio>
#include <memory>
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
#include "mlxk_internal.h"

namespace mlxe {
void set_last_error(const std::string& msg);
int qmatmul_checked(const void* w, int type, int64_t n, int64_t k, const float* x, int64_t m, int64_t ldx,
                    float* y, int64_t ldy);
int validate(int type, int64_t n, int64_t k, int64_t* row_bytes);
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

template <typename T>
void gather_to_f32(const T* src, const mx::Shape& shape, const mx::Strides& strides, float* dst) {
  const int nd = (int)shape.size();
  int64_t total = 1;
  for (int i = 0; i < nd; ++i) total *= shape[i];
  std::vector<int64_t> idx((size_t)nd, 0);
  int64_t off = 0;
  for (int64_t e = 0; e < total; ++e) {
    dst[e] = static_cast<float>(src[off]);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (int64_t)(shape[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace

class GgufQMatmul : public mx::UnaryPrimitive {
 public:
  GgufQMatmul(mx::Stream s, int type, int64_t n, int64_t k) : mx::UnaryPrimitive(s), type_(type), n_(n), k_(k) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(x);
    enc.set_input_array(w);
    enc.set_output_array(out);

    int64_t rows = 0, ldx = 0;
    const bool direct = x.dtype() == mx::float32 && row_view(x, &rows, &ldx);
    if (!direct) {
      rows = 1;
      for (size_t i = 0; i + 1 < x.ndim(); ++i) rows *= x.shape(i);
      ldx = k_;
    }
    const bool w_ok = w.flags().row_contiguous;
    const int type = type_;
    const int64_t n = n_, k = k_;
    float* y = out.data<float>();
    const void* xp = x.data<void>();
    const void* wp = w.data<void>();
    const mx::Dtype xdt = x.dtype();
    const mx::Shape xshape = x.shape(), wshape = w.shape();
    const mx::Strides xstr = x.strides(), wstr = w.strides();
    enc.dispatch([=]() {
      try {
        std::vector<float> xbuf;
        const float* xf = (const float*)xp;
        if (!direct) {
          xbuf.resize((size_t)(rows * k));
          if (xdt == mx::float32)
            gather_to_f32((const float*)xp, xshape, xstr, xbuf.data());
          else if (xdt == mx::float16)
            gather_to_f32((const mx::float16_t*)xp, xshape, xstr, xbuf.data());
          else
            gather_to_f32((const mx::bfloat16_t*)xp, xshape, xstr, xbuf.data());
          xf = xbuf.data();
        }
        std::vector<uint8_t> wbuf;
        const uint8_t* wf = (const uint8_t*)wp;
        if (!w_ok) {  // defensive: weights are normally a contiguous (mmap-backed) buffer
          int64_t total = 1;
          for (auto s : wshape) total *= s;
          wbuf.resize((size_t)total);
          std::vector<float> tmp((size_t)total);
          gather_to_f32((const uint8_t*)wp, wshape, wstr, tmp.data());
          for (int64_t i = 0; i < total; ++i) wbuf[(size_t)i] = (uint8_t)tmp[(size_t)i];
          wf = wbuf.data();
        }
        const int rc = mlxe::qmatmul_checked(wf, type, n, k, xf, rows, ldx, y, n);
        if (rc) std::fprintf(stderr, "GgufQMatmul: kernel error %d: %s\n", rc, mlxk_last_error());
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

  const char* name() const override { return "GgufQMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GgufQMatmul*>(&other);
    return o && o->type_ == type_ && o->n_ == n_ && o->k_ == k_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape s = inputs[0].shape();
    s.back() = (int32_t)n_;
    return {s};
  }

  int type() const { return type_; }

 private:
  int type_;
  int64_t n_, k_;
};

}  // namespace mlx_engine

extern "C" int mlxk_gguf_qmatmul(mlx_array* res, const mlx_array x, const mlx_array w, int ggml_type, int64_t n,
                                 int64_t k, const mlx_stream s) {
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
    mx::array out(std::move(out_shape), mx::float32,
                  std::make_shared<mlx_engine::GgufQMatmul>(st, ggml_type, n, k), {xa, wa});
    mlx_array_set_(*res, std::move(out));
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_gguf_qmatmul: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_gguf_qmatmul: unknown exception");
  }
  return 1;
}
