// Correctness harness: every type, scalar vs AVX2, random shapes, thread counts, strides.
// Usage: ./test [--dump DIR]   (--dump writes blocks + our dequantization for gguf_check.py)
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common.h"

static int g_pass = 0, g_fail = 0;
#define CHECK(cond, ...)            \
  do {                              \
    if (cond) {                     \
      ++g_pass;                     \
    } else {                        \
      ++g_fail;                     \
      printf("FAIL: " __VA_ARGS__); \
      printf("\n");                 \
    }                               \
  } while (0)

struct Err {
  double max_abs = 0, max_rel_l1 = 0, max_rel = 0, max_of_bound = 0;
};

static void dump(const char* dir) {
  std::mt19937_64 rng(7);
  for (auto& t : kTypes) {
    const int64_t n = 3, k = t.block == 256 ? 512 : 64;
    auto w = random_weights(t, n, k, rng);
    std::vector<float> out((size_t)(n * k));
    int rc = mlxk_dequantize_rows(w.data(), t.id, n, k, out.data());
    CHECK(rc == 0, "dequantize %s rc=%d", t.name, rc);
    std::string base = std::string(dir) + "/" + t.name;
    FILE* f = fopen((base + ".blocks").c_str(), "wb");
    fwrite(w.data(), 1, w.size(), f);
    fclose(f);
    f = fopen((base + ".f32").c_str(), "wb");
    fwrite(out.data(), 4, out.size(), f);
    fclose(f);
  }
}

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--dump") {
    dump(argv[2]);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail != 0;
  }
  std::mt19937_64 rng(1234);
  const int have_avx2 = [] {
    mlxk_force_path(MLXK_PATH_AVX2);
    int p = mlxk_kernel_path();
    mlxk_force_path(MLXK_PATH_AUTO);
    return p == MLXK_PATH_AVX2;
  }();
  const int have_vnni = [] {
    mlxk_force_path(MLXK_PATH_AVX512_VNNI);
    int p = mlxk_kernel_path();
    mlxk_force_path(MLXK_PATH_AUTO);
    return p == MLXK_PATH_AVX512_VNNI;
  }();
  printf("avx2 available: %d, avx512-vnni available: %d, default threads %d\n", have_avx2, have_vnni,
         mlxk_get_num_threads());
  // The SIMD paths checked against the scalar one (VNNI includes the zmm kernels for m >= 2).
  const int paths[2] = {MLXK_PATH_AVX2, MLXK_PATH_AVX512_VNNI};
  const char* path_names[2] = {"avx2", "vnni"};
  const int npaths = have_avx2 ? (have_vnni ? 2 : 1) : 0;

  // error handling
  {
    float x[32] = {0}, y[4];
    uint8_t w[64] = {0};
    CHECK(mlxk_qmatmul_f32(w, 5, 1, 32, x, 1, 32, y, 1) == MLXK_ERR_BAD_TYPE, "bad type");
    CHECK(mlxk_qmatmul_f32(w, MLXK_TYPE_Q8_0, 1, 48, x, 1, 48, y, 1) == MLXK_ERR_BAD_SHAPE, "bad k");
    CHECK(strstr(mlxk_last_error(), "block size") != nullptr, "error message: %s", mlxk_last_error());
    CHECK(mlxk_qmatmul_f32(nullptr, MLXK_TYPE_Q8_0, 1, 32, x, 1, 32, y, 1) == MLXK_ERR_BAD_ARG, "null w");
    int64_t rb = 0;
    CHECK(mlxk_row_bytes(MLXK_TYPE_Q6_K, 4864, &rb) == 0 && rb == 19 * 210, "row bytes q6k");
    CHECK(mlxk_row_bytes(MLXK_TYPE_Q4_K, 896, &rb) == MLXK_ERR_BAD_SHAPE, "row bytes q4k 896");
    int pt = 0;
    CHECK(mlxk_repack_rows(w, MLXK_TYPE_Q4_K | MLXK_TYPE_REPACKED, 1, 256, x, &pt) == MLXK_ERR_BAD_TYPE,
          "repacked id is not repacked again");
    CHECK(mlxk_qmatmul_f32(w, MLXK_TYPE_Q4_K | MLXK_TYPE_REPACKED, 1, 256, x, 1, 256, y, 1) == MLXK_ERR_BAD_TYPE,
          "no repacked Q4_K");
    CHECK(mlxk_repack_rows(w, MLXK_TYPE_Q8_0, 1, 32, w + 10, &pt) == MLXK_ERR_BAD_ARG, "overlap refused");
  }

  // this harness's copy of the block sizes against the kernels' (tests/ggml_type_table.rs
  // checks the kernels' against the Rust table)
  for (auto& t : kTypes) {
    int64_t rb = 0;
    CHECK(mlxk_block_size(t.id) == t.block && mlxk_row_bytes(t.id, t.block, &rb) == 0 && rb == t.bytes,
          "type table %s: block %d bytes %lld", t.name, mlxk_block_size(t.id), (long long)rb);
  }

  const int Ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 64, 130};
  for (auto& t : kTypes) {
    Err errs[2];
    std::vector<int64_t> Ks, Ns = {1, 37, 259};
    if (t.block == 1) Ks = {7, 64, 901};
    else if (t.block == 32) Ks = {32, 160, 896};
    else Ks = {256, 768};
    for (int64_t k : Ks)
      for (int64_t n : Ns)
        for (int m : Ms) {
          if (m == 130 && n == 259 && k > 800) continue;  // keep the scalar reference quick
          const int64_t ldx = k + (m > 1 ? 5 : 0), ldy = n + (m > 1 ? 3 : 0);
          auto w = random_weights(t, n, k, rng);
          auto x = random_acts(m, ldx, rng);
          std::vector<float> yref((size_t)(m * ldy), -777.f), y1(yref), y2(yref), ys2(yref);
          mlxk_force_path(MLXK_PATH_SCALAR);
          mlxk_set_num_threads(1);
          int rc = mlxk_qmatmul_f32(w.data(), t.id, n, k, x.data(), m, ldx, yref.data(), ldy);
          CHECK(rc == 0, "%s scalar rc=%d %s", t.name, rc, mlxk_last_error());
          mlxk_set_num_threads(2);
          mlxk_qmatmul_f32(w.data(), t.id, n, k, x.data(), m, ldx, ys2.data(), ldy);
          CHECK(memcmp(ys2.data(), yref.data(), 4 * ys2.size()) == 0, "%s scalar 1 vs 2 threads", t.name);
          // padding untouched
          bool pad_ok = true;
          for (int mm = 0; mm < m; ++mm)
            for (int64_t j = n; j < ldy; ++j) pad_ok &= yref[mm * ldy + j] == -777.f;
          CHECK(pad_ok, "%s padding overwritten", t.name);
          std::vector<float> wr((size_t)(n * k));
          mlxk_dequantize_rows(w.data(), t.id, n, k, wr.data());
          std::vector<float> yavx2(yref);  // the AVX2 result, which the VNNI path equals bit for bit
          for (int pi = 0; pi < npaths; ++pi) {
            const int path = paths[pi];
            const char* pname = path_names[pi];
            mlxk_force_path(path);
            mlxk_set_num_threads(1);
            rc = mlxk_qmatmul_f32(w.data(), t.id, n, k, x.data(), m, ldx, y1.data(), ldy);
            CHECK(rc == 0, "%s %s rc=%d", t.name, pname, rc);
            mlxk_set_num_threads(3);
            rc = mlxk_qmatmul_f32(w.data(), t.id, n, k, x.data(), m, ldx, y2.data(), ldy);
            CHECK(memcmp(y1.data(), y2.data(), 4 * y1.size()) == 0, "%s %s 1 vs 3 threads differ (m=%d n=%lld k=%lld)",
                  t.name, pname, m, (long long)n, (long long)k);
            if (path == MLXK_PATH_AVX2) yavx2 = y1;
            // (quantized types; F32 rows whose K is not a multiple of 8 differ in the last bits at m >= 16)
            if (path == MLXK_PATH_AVX512_VNNI && t.block > 1)
              CHECK(memcmp(y1.data(), yavx2.data(), 4 * y1.size()) == 0, "%s vnni differs from avx2 (m=%d n=%lld k=%lld)",
                    t.name, m, (long long)n, (long long)k);
            // Repacked layout: same results as the ggml rows, bit for bit, on every path.
            if (mlxk_repack_supported(t.id)) {
              std::vector<uint8_t> wp(w.size());
              int pt = -1;
              CHECK(mlxk_repack_rows(w.data(), t.id, n, k, wp.data(), &pt) == 0 && pt == (t.id | MLXK_TYPE_REPACKED),
                    "%s repack rc %s", t.name, mlxk_last_error());
              std::vector<float> yp(yref), dp((size_t)(n * k)), dw((size_t)(n * k));
              mlxk_dequantize_rows(w.data(), t.id, n, k, dw.data());
              mlxk_dequantize_rows(wp.data(), pt, n, k, dp.data());
              CHECK(memcmp(dw.data(), dp.data(), 4 * dw.size()) == 0, "%s repacked dequantize differs", t.name);
              mlxk_set_num_threads(2);
              mlxk_qmatmul_f32(wp.data(), pt, n, k, x.data(), m, ldx, yp.data(), ldy);
              CHECK(memcmp(yp.data(), y2.data(), 4 * yp.size()) == 0, "%s %s repacked differs (m=%d n=%lld k=%lld)",
                    t.name, pname, m, (long long)n, (long long)k);
              mlxk_force_path(MLXK_PATH_SCALAR);
              std::vector<float> ysp(yref);
              mlxk_qmatmul_f32(wp.data(), pt, n, k, x.data(), m, ldx, ysp.data(), ldy);
              CHECK(memcmp(ysp.data(), yref.data(), 4 * ysp.size()) == 0, "%s scalar repacked differs", t.name);
              mlxk_force_path(path);
            }
            // Batch invariance: each row equals that row multiplied alone, bit for bit, so a
            // token's logits do not depend on what it was batched with.
            if (m > 1) {
              std::vector<float> yr((size_t)n);
              bool same = true;
              for (int mm = 0; mm < m && same; ++mm) {
                mlxk_qmatmul_f32(w.data(), t.id, n, k, x.data() + mm * ldx, 1, k, yr.data(), n);
                same = memcmp(yr.data(), y1.data() + mm * ldy, 4 * (size_t)n) == 0;
              }
              CHECK(same, "%s %s rows differ from the same rows alone (m=%d n=%lld k=%lld)", t.name, pname, m,
                    (long long)n, (long long)k);
            }
            bool ok = true;
            for (int mm = 0; mm < m; ++mm)
              for (int64_t j = 0; j < ldy; ++j) {
                if (j >= n) {
                  ok &= y1[mm * ldy + j] == -777.f;
                  continue;
                }
                // Rigorous bound of the int8 activation rounding: sum over activation blocks of
                // (amax_b / 127 / 2) * sum_{i in b} |w_i|, plus f32 accumulation slack.
                const int ab = t.block == 256 ? 256 : 32;
                double l1 = 0, bound = 0;
                for (int64_t b0 = 0; b0 < k; b0 += ab) {
                  double amax = 0, wl1 = 0;
                  for (int64_t i = b0; i < b0 + ab && i < k; ++i) {
                    amax = std::max(amax, (double)std::fabs(x[mm * ldx + i]));
                    wl1 += std::fabs((double)wr[j * k + i]);
                    l1 += std::fabs((double)wr[j * k + i] * x[mm * ldx + i]);
                  }
                  bound += 0.5 * amax / 127.0 * wl1;
                }
                if (t.block == 1) bound = 0;
                const double ref = yref[mm * ldy + j], d = std::fabs(y1[mm * ldy + j] - ref);
                errs[pi].max_abs = std::max(errs[pi].max_abs, d);
                if (l1 > 0) errs[pi].max_rel_l1 = std::max(errs[pi].max_rel_l1, d / l1);
                if (bound > 0) errs[pi].max_of_bound = std::max(errs[pi].max_of_bound, d / bound);
                if (std::fabs(ref) > 0.25 * l1 && std::fabs(ref) > 0) errs[pi].max_rel = std::max(errs[pi].max_rel, d / std::fabs(ref));
                const double tol = 1.001 * bound + 2e-6 * l1 + 1e-6;
                if (!(d <= tol)) {
                  if (ok) printf("  %s %s m=%d n=%lld k=%lld row %lld col %d: got %g want %g (l1 %g bound %g)\n", t.name, pname, m,
                                 (long long)n, (long long)k, (long long)j, mm, y1[mm * ldy + j], ref, l1, bound);
                  ok = false;
                }
              }
            CHECK(ok, "%s %s vs scalar m=%d n=%lld k=%lld", t.name, pname, m, (long long)n, (long long)k);
          }
        }
    for (int pi = 0; pi < npaths; ++pi)
      printf("%-5s %-4s vs scalar: max_abs %.3g  max |err|/sum|w*x| %.3g  max rel (|ref|>.25 sum|wx|) %.3g  max err/bound %.3g\n",
             t.name, path_names[pi], errs[pi].max_abs, errs[pi].max_rel_l1, errs[pi].max_rel, errs[pi].max_of_bound);
  }
  mlxk_force_path(MLXK_PATH_AUTO);
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail != 0;
}
