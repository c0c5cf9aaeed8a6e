// Timing harness: memory bandwidth, GEMV / GEMM per type and path, a simulated decode token.
// Usage: ./bench [quick | kern | bw | decode TOKENS [r8|ggml] [M] [0.5b|1.5b] | small]
#include <sys/mman.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "common.h"

static uint64_t g_sink;

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t* q, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i*)(q + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i*)(q + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i*)(q + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i*)(q + i + 96)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  return (uint64_t)_mm256_extract_epi64(s, 0) + (uint64_t)_mm256_extract_epi64(s, 3);
}

static double stream_read_gbs(int threads) {
  // The best streaming read the machine gives: 2 MiB pages (as our weight arena uses), AVX2
  // loads, best of 6 passes over 1 GiB.
  const size_t bytes = (size_t)1 << 30;
  uint64_t* p = (uint64_t*)aligned_alloc(size_t(2) << 20, bytes);
  madvise(p, bytes, MADV_HUGEPAGE);
  memset(p, 1, bytes);
  double best = 0;
  for (int it = 0; it < 6; ++it) {
    double t0 = now_s();
    std::vector<std::thread> th;
    for (int t = 0; t < threads; ++t)
      th.emplace_back([=] { __atomic_fetch_add(&g_sink, sum_avx2((const uint8_t*)p + bytes / threads * t, bytes / threads), __ATOMIC_RELAXED); });
    for (auto& x : th) x.join();
    best = std::max(best, bytes / (now_s() - t0) / 1e9);
  }
  free(p);
  return best;
}

struct Mat {
  std::vector<uint8_t> w;  // `copies` consecutive copies (cold = rotate through them)
  size_t bytes;            // one matrix
  int copies;
};

static Mat make(const TypeDesc& t, int64_t n, int64_t k, bool cold, std::mt19937_64& rng) {
  Mat m;
  auto one = random_weights(t, n, k, rng);
  m.bytes = one.size();
  m.copies = cold ? (int)std::max<size_t>(2, std::min<size_t>(64, ((size_t)384 << 20) / m.bytes)) : 1;
  m.w.resize(m.bytes * m.copies);
  for (int c = 0; c < m.copies; ++c) memcpy(m.w.data() + c * m.bytes, one.data(), m.bytes);
  return m;
}

// Returns {best, mean} ms per call; `best` is robust on a shared, busy machine.
struct Timing {
  double best, mean;
};
static Timing time_mm(const TypeDesc& t, Mat& mat, int64_t n, int64_t k, int64_t m, const float* x, float* y,
                      double min_time) {
  int c = 0;
  mlxk_qmatmul_f32(mat.w.data(), t.id, n, k, x, m, k, y, n);  // warm-up
  int iters = 0;
  double best = 1e9, t0 = now_s(), t1 = t0;
  do {
    c = (c + 1) % mat.copies;
    const double s = now_s();
    int rc = mlxk_qmatmul_f32(mat.w.data() + (size_t)c * mat.bytes, t.id, n, k, x, m, k, y, n);
    if (rc) {
      printf("error %d: %s\n", rc, mlxk_last_error());
      exit(1);
    }
    ++iters;
    t1 = now_s();
    best = std::min(best, t1 - s);
  } while (t1 - t0 < min_time || iters < 5);
  return {best * 1e3, (t1 - t0) / iters * 1e3};
}

// Kernel throughput with weights resident in L2 (1 thread, min over many calls): robust on a
// busy machine; tells whether a kernel can keep up with DRAM.
static void kernel_throughput(std::mt19937_64& rng) {
  mlxk_set_num_threads(1);
  mlxk_force_path(MLXK_PATH_AVX2);
  std::vector<float> x = random_acts(128, 4864, rng), y((size_t)128 * 4864);
  printf("%-5s %14s %14s %14s\n", "type", "GEMV L2 GB/s", "GEMV GMAC/s", "GEMM128 GMAC/s");
  for (auto& t : kTypes) {
    const int64_t k = 2048, n = 64;
    auto w = random_weights(t, n, k, rng);
    for (int variant = 0; variant < 2; ++variant) {
      int id = t.id;
      if (variant == 1) {  // the repacked layout, where the type has one
        if (!mlxk_repack_supported(t.id)) break;
        std::vector<uint8_t> p(w.size());
        mlxk_repack_rows(w.data(), t.id, n, k, p.data(), &id);
        w.swap(p);
      }
      double best = 1e9, bestg = 1e9;
      for (int i = 0; i < 400; ++i) {
        double t0 = now_s();
        mlxk_qmatmul_f32(w.data(), id, n, k, x.data(), 1, k, y.data(), n);
        best = std::min(best, now_s() - t0);
      }
      for (int i = 0; i < 20; ++i) {
        double t0 = now_s();
        mlxk_qmatmul_f32(w.data(), id, n, k, x.data(), 128, k, y.data(), n);
        bestg = std::min(bestg, now_s() - t0);
      }
      printf("%-5s%-3s %11.2f %14.2f %14.2f\n", t.name, variant ? " r8" : "", w.size() / best / 1e9,
             (double)n * k / best / 1e9, 128.0 * n * k / bestg / 1e9);
    }
  }
}

// Few-row kernels with weights resident in L2 (1 thread, best of many calls): time per call for
// M = 1..16 activation rows on the AVX2 and the VNNI path (which runs the zmm kernels for M >= 2).
static void small_m(std::mt19937_64& rng) {
  mlxk_set_num_threads(1);
  const int Ms[] = {1, 2, 3, 4, 8, 16};
  std::vector<float> x = random_acts(16, 2048, rng), y((size_t)16 * 64);
  printf("%-8s %-5s", "type", "path");
  for (int m : Ms) printf(" %8s", ("M=" + std::to_string(m) + " us").c_str());
  printf("\n");
  for (const char* name : {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}) {
    const TypeDesc& t = *find_type(name);
    const int64_t k = 2048, n = 64;
    auto w = random_weights(t, n, k, rng);
    int id = t.id;
    if (mlxk_repack_supported(t.id)) {
      std::vector<uint8_t> p(w.size());
      mlxk_repack_rows(w.data(), t.id, n, k, p.data(), &id);
      w.swap(p);
    }
    for (int path : {MLXK_PATH_AVX2, MLXK_PATH_AVX512_VNNI}) {
      mlxk_force_path(path);
      printf("%-8s %-5s", name, path == MLXK_PATH_AVX2 ? "avx2" : "vnni");
      for (int m : Ms) {
        double best = 1e9;
        for (int i = 0; i < 300; ++i) {
          double t0 = now_s();
          mlxk_qmatmul_f32(w.data(), id, n, k, x.data(), m, k, y.data(), n);
          best = std::min(best, now_s() - t0);
        }
        printf(" %8.2f", best * 1e6);
      }
      printf("\n");
    }
  }
  mlxk_force_path(MLXK_PATH_AUTO);
}

// Prefill-sized products (M = 128) on the default path with repacked weights, all threads:
// the zmm kernels on AVX-512 VNNI hosts. Best of 20 calls, ms.
static void prefill_m(std::mt19937_64& rng) {
  mlxk_force_path(MLXK_PATH_AUTO);
  struct S {
    int64_t k, n;
  };
  const S shapes[] = {{896, 4864}, {4864, 896}, {896, 896}};
  std::vector<float> x = random_acts(128, 4864, rng), y((size_t)128 * 4864);
  for (const char* name : {"Q5_0", "Q8_0", "Q4_0"}) {
    const TypeDesc& t = *find_type(name);
    for (const S& s : shapes) {
      auto w = random_weights(t, s.n, s.k, rng);
      int id = t.id;
      if (mlxk_repack_supported(t.id)) {
        std::vector<uint8_t> p(w.size());
        mlxk_repack_rows(w.data(), t.id, s.n, s.k, p.data(), &id);
        w.swap(p);
      }
      double best = 1e9;
      for (int i = 0; i < 20; ++i) {
        double t0 = now_s();
        mlxk_qmatmul_f32(w.data(), id, s.n, s.k, x.data(), 128, s.k, y.data(), s.n);
        best = std::min(best, now_s() - t0);
      }
      printf("%s 128x%lld->%lld %.3f ms\n", name, (long long)s.k, (long long)s.n, best * 1e3);
    }
  }
}

// A simulated decode step of M sequences (M activation rows per matmul) on the shapes and tensor
// types of a real model: "0.5b" (Qwen2.5-0.5B Q4_K_M: mostly Q5_0, Q8_0 head) or "1.5b"
// (Qwen2.5-1.5B Q4_K_M: Q4_K, with Q6_K in half the layers' V and down, and a Q6_K head).
static void decode_sim(std::mt19937_64& rng, int tokens, bool repack, int m, const std::string& model) {
  const int hw = mlxk_get_num_threads();
  mlxk_force_path(MLXK_PATH_AUTO);
  mlxk_set_num_threads(hw);
  struct L {
    const char *type, *alt;  // alt: the type in odd layers
    int64_t k, n;
  };
  const bool big = model == "1.5b";
  const std::vector<L> layer =
      big ? std::vector<L>{{"Q4_K", "Q4_K", 1536, 1536}, {"Q4_K", "Q4_K", 1536, 256}, {"Q6_K", "Q4_K", 1536, 256},
                           {"Q4_K", "Q4_K", 1536, 1536}, {"Q4_K", "Q4_K", 1536, 8960}, {"Q4_K", "Q4_K", 1536, 8960},
                           {"Q6_K", "Q4_K", 8960, 1536}}
          : std::vector<L>{{"Q5_0", "Q5_0", 896, 896},  {"Q5_0", "Q5_0", 896, 128},  {"Q8_0", "Q8_0", 896, 128},
                           {"Q5_0", "Q5_0", 896, 896},  {"Q5_0", "Q5_0", 896, 4864}, {"Q5_0", "Q5_0", 896, 4864},
                           {"Q6_K", "Q4_K", 4864, 896}};
  const int layers = big ? 28 : 24;
  const int64_t dim = big ? 1536 : 896, vocab = 151936;
  const char* head_type = big ? "Q6_K" : "Q8_0";
  std::vector<std::vector<uint8_t>> ws;
  std::vector<int> ids;
  size_t total = 0;
  auto add = [&](const char* ty, int64_t n, int64_t k) {
    ws.push_back(random_weights(*find_type(ty), n, k, rng));
    total += ws.back().size();
    ids.push_back(find_type(ty)->id);
    if (repack && mlxk_repack_supported(ids.back())) {
      std::vector<uint8_t> p(ws.back().size());
      mlxk_repack_rows(ws.back().data(), ids.back(), n, k, p.data(), &ids.back());
      ws.back().swap(p);
    }
  };
  for (int l = 0; l < layers; ++l)
    for (auto& d : layer) add((l & 1) ? d.alt : d.type, d.n, d.k);
  add(head_type, vocab, dim);
  std::vector<float> xs((size_t)m * 8960, 0.5f), ys((size_t)m * vocab);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  double best = 1e9, sum = 0;
  for (int t = 0; t < tokens + 1; ++t) {
    double t0 = now_s();
    size_t i = 0;
    for (int l = 0; l < layers; ++l)
      for (auto& d : layer) {
        mlxk_qmatmul_f32(ws[i].data(), ids[i], d.n, d.k, xs.data(), m, d.k, ys.data(), d.n);
        ++i;
      }
    mlxk_qmatmul_f32(ws[i].data(), ids[i], vocab, dim, xs.data(), m, dim, ys.data(), vocab);
    double dt = now_s() - t0;
    if (t > 0) {
      best = std::min(best, dt);
      sum += dt;
    }
  }
  printf("simulated %s decode step, M=%d (%s, %.0f MB weights, %d threads): mean %.2f ms (%.1f rows/s, %.1f GB/s), best %.2f ms\n",
         model.c_str(), m, repack ? "repacked" : "ggml layout", total / 1e6, hw, sum / tokens * 1e3, m * tokens / sum,
         total / (sum / tokens) / 1e9, best * 1e3);
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937_64 rng(42);
  if (argc > 1 && std::string(argv[1]) == "decode") {
    decode_sim(rng, argc > 2 ? atoi(argv[2]) : 20, argc > 3 && std::string(argv[3]) == "r8", argc > 4 ? atoi(argv[4]) : 1,
               argc > 5 ? argv[5] : "0.5b");
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "small") {
    small_m(rng);
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "prefill") {
    prefill_m(rng);
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "bw") {
    const int hw = (int)std::thread::hardware_concurrency();
    printf("memory bandwidth (streaming read, 1 GiB): 1 thread %.1f GB/s, %d threads %.1f GB/s\n",
           stream_read_gbs(1), hw, stream_read_gbs(hw));
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "kern") {
    kernel_throughput(rng);
    return 0;
  }
  const int hw = (int)std::thread::hardware_concurrency();
  printf("memory bandwidth (streaming read, 1 GiB): 1 thread %.1f GB/s, %d threads %.1f GB/s\n",
         stream_read_gbs(1), hw, stream_read_gbs(hw));

  struct Shape {
    int64_t m, k, n;
  };
  const Shape gemv[] = {{1, 896, 4864}, {1, 4864, 896}, {1, 2048, 5632}, {1, 896, 896}, {1, 896, 128}};
  const Shape gemm[] = {{128, 896, 4864}, {128, 4864, 896}, {128, 2048, 5632}};
  const char* types[] = {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "Q4_0", "F16"};
  std::vector<float> x = random_acts(128, 5632, rng), y((size_t)128 * 5632);

  printf("\n%-17s %-5s %-6s %3s %9s %9s %8s %8s\n", "shape (MxK->N)", "type", "path", "thr", "best ms", "mean ms",
         "GB/s", "GMAC/s");
  auto row = [&](const Shape& s, const TypeDesc& t, int path, int thr, bool cold) {
    if (s.k % t.block) return;
    mlxk_force_path(path);
    mlxk_set_num_threads(thr);
    Mat mat = make(t, s.n, s.k, cold, rng);
    const Timing tm = time_mm(t, mat, s.n, s.k, s.m, x.data(), y.data(), quick ? 0.2 : 0.6);
    const double ms = tm.best;
    char shape[64];
    snprintf(shape, sizeof shape, "%lldx%lld->%lld%s", (long long)s.m, (long long)s.k, (long long)s.n,
             cold ? "" : " hot");
    printf("%-17s %-5s %-6s %3d %9.3f %9.3f %8.2f %8.1f\n", shape, t.name,
           path == MLXK_PATH_SCALAR ? "scalar" : "avx2", thr, ms, tm.mean, mat.bytes / ms / 1e6,
           (double)s.m * s.k * s.n / ms / 1e6);
  };
  for (auto& s : gemv)
    for (auto tn : types) {
      const TypeDesc& t = *find_type(tn);
      row(s, t, MLXK_PATH_AVX2, 1, true);
      row(s, t, MLXK_PATH_AVX2, hw, true);
      if (s.n == 896 && s.k == 896) row(s, t, MLXK_PATH_AVX2, hw, false);
      if (!quick && s.n == 4864 && s.k == 896) row(s, t, MLXK_PATH_SCALAR, hw, true);
    }
  for (auto& s : gemm)
    for (auto tn : types) {
      if (!strcmp(tn, "Q4_0") || !strcmp(tn, "F16")) continue;
      const TypeDesc& t = *find_type(tn);
      row(s, t, MLXK_PATH_AVX2, 1, false);
      row(s, t, MLXK_PATH_AVX2, hw, false);
    }

  decode_sim(rng, quick ? 5 : 20, false, 1, "0.5b");
  decode_sim(rng, quick ? 5 : 20, true, 1, "0.5b");
  return 0;
}
