// The AVX2 kernels of quant_avx2.cpp compiled again, as namespace mlxe::vnni, for CPUs with
// AVX-512 VNNI and VL: the int8 dot products of the 32-element-block types run as vpdpbusd
// on 256-bit registers, and the K-quants on 512-bit registers (kq_zmm); see the notes in
// quant_avx2.cpp. Same results as the AVX2 path, bit for bit.
#define MLXK_VNNI 1
#include "quant_avx2.cpp"
