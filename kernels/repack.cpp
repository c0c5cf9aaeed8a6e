// Load-time repacking of Q5_0 and Q8_0 rows into the kernels' own group layout ("r8").
//
// A row of K elements is K/32 ggml blocks. Each full group of 8 consecutive blocks is rewritten
// so that a group is read with whole 32-byte loads and its eight f16 scales with one 16-byte load:
//
//   Q5_0 r8 group (176 bytes = 8 x 22):
//     [0, 16)    d[8]   f16 scale of block b
//     [16, 48)   H[32]  bit b of byte j = fifth bit of element j of block b (bit-sliced)
//     [48, 176)  V[4][32]  V[p][j] = low4(element j of block 2p) | low4(element j of block 2p+1) << 4
//   Q8_0 r8 group (272 bytes = 8 x 34):
//     [0, 16)    d[8]   f16 scale of block b
//     [16, 272)  q[8][32]  int8 elements of block b
//
// A trailing partial group (K/32 not a multiple of 8) stays in the ggml layout, at the same
// offset it has in the ggml row (a group takes exactly the bytes of its 8 blocks), so a row
// keeps its size and every block its byte range within the row.
#include <cstring>

#include "mlxk_internal.h"

namespace mlxe {

namespace {

constexpr int kQ5Bytes = 22, kQ8Bytes = 34;

void pack_q5_0_group(const uint8_t* src, uint8_t* dst) {
  uint8_t lo[8][32];
  uint32_t qh[8];
  for (int b = 0; b < 8; ++b) {
    const uint8_t* blk = src + b * kQ5Bytes;
    std::memcpy(dst + 2 * b, blk, 2);
    qh[b] = load_u32(blk + 2);
    const uint8_t* qs = blk + 6;
    for (int j = 0; j < 16; ++j) {
      lo[b][j] = qs[j] & 0x0f;
      lo[b][j + 16] = qs[j] >> 4;
    }
  }
  uint8_t* h = dst + 16;
  for (int j = 0; j < 32; ++j) {
    uint32_t byte = 0;
    for (int b = 0; b < 8; ++b) byte |= ((qh[b] >> j) & 1u) << b;
    h[j] = (uint8_t)byte;
  }
  uint8_t* v = dst + 48;
  for (int p = 0; p < 4; ++p)
    for (int j = 0; j < 32; ++j) v[32 * p + j] = (uint8_t)(lo[2 * p][j] | (lo[2 * p + 1][j] << 4));
}

void unpack_q5_0_group(const uint8_t* src, uint8_t* dst) {
  const uint8_t* h = src + 16;
  const uint8_t* v = src + 48;
  for (int b = 0; b < 8; ++b) {
    uint8_t* blk = dst + b * kQ5Bytes;
    std::memcpy(blk, src + 2 * b, 2);
    uint32_t qh = 0;
    uint8_t* qs = blk + 6;
    for (int j = 0; j < 32; ++j) {
      const uint8_t byte = v[32 * (b / 2) + j];
      const int lo = (b & 1) ? (byte >> 4) : (byte & 0x0f);
      qh |= (uint32_t)((h[j] >> b) & 1) << j;
      if (j < 16)
        qs[j] = (uint8_t)lo;
      else
        qs[j - 16] = (uint8_t)(qs[j - 16] | (lo << 4));
    }
    std::memcpy(blk + 2, &qh, 4);
  }
}

void pack_q8_0_group(const uint8_t* src, uint8_t* dst) {
  for (int b = 0; b < 8; ++b) {
    std::memcpy(dst + 2 * b, src + b * kQ8Bytes, 2);
    std::memcpy(dst + 16 + 32 * b, src + b * kQ8Bytes + 2, 32);
  }
}

void unpack_q8_0_group(const uint8_t* src, uint8_t* dst) {
  for (int b = 0; b < 8; ++b) {
    std::memcpy(dst + b * kQ8Bytes, src + 2 * b, 2);
    std::memcpy(dst + b * kQ8Bytes + 2, src + 16 + 32 * b, 32);
  }
}

typedef void (*GroupFn)(const uint8_t*, uint8_t*);

// Rewrites one row group by group with `fn`; the partial tail group is copied as is.
void convert_row(GroupFn fn, int block_bytes, const uint8_t* src, int64_t k, uint8_t* dst) {
  const int64_t nb = k / 32, ng = nb / 8;
  const size_t gb = 8 * (size_t)block_bytes;
  for (int64_t g = 0; g < ng; ++g) fn(src + g * gb, dst + g * gb);
  std::memcpy(dst + ng * gb, src + ng * gb, (size_t)(nb % 8) * block_bytes);
}

}  // namespace

bool repack_supported(int type) { return type == T_Q5_0 || type == T_Q8_0; }

void repack_row(int type, const uint8_t* src, int64_t k, uint8_t* dst) {
  if (type == T_Q5_0)
    convert_row(pack_q5_0_group, kQ5Bytes, src, k, dst);
  else
    convert_row(pack_q8_0_group, kQ8Bytes, src, k, dst);
}

void unpack_row(int type, const uint8_t* src, int64_t k, uint8_t* dst) {
  if (type == T_Q5_0)
    convert_row(unpack_q5_0_group, kQ5Bytes, src, k, dst);
  else
    convert_row(unpack_q8_0_group, kQ8Bytes, src, k, dst);
}

}  // namespace mlxe
