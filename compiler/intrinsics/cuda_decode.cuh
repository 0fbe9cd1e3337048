// lowbit: packed low-bit codes -> binary16, two codes per instruction (the "magic number" decode).
//
// A word holds its codes halfword-interleaved (compiler/cuda_layout.py): code 2p in bits
// [BITS*p, BITS*(p+1)) of the low half, code 2p+1 at the same place in the high half. Then
//     lop3(word >> BITS*p, MASK, 0x64006400, (a & b) | c)
// yields the half2 (1024 + code[2p], 1024 + code[2p+1]): 0x6400 is 1024.0 in binary16, whose ulp is 1,
// so a code of up to 10 bits OR-ed into the mantissa is that integer exactly (FasterTransformer,
// Marlin, BitBLAS). LOP3.LUT computes any 3-input bitwise function in one instruction; the lookup
// table 0xEA is (a & b) | c (PTX ISA, "Logic and Shift Instructions: lop3").
// Include guard, not #pragma once: TVM pastes this source once per kernel that uses it into one module.
#ifndef LOWBIT_CUDA_DECODE_CUH_
#define LOWBIT_CUDA_DECODE_CUH_
#include <cuda_fp16.h>
#include <stdint.h>

template <int BITS>
__device__ __forceinline__ void lowbit_decode_magic(uint32_t word, half* out) {
  constexpr uint32_t kMask = ((1u << BITS) - 1u) * 0x00010001u;
  constexpr uint32_t kMagic = 0x64006400u;
#pragma unroll
  for (int p = 0; p < 16 / BITS; ++p) {
    uint32_t pair;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(pair) : "r"(word >> (BITS * p)), "n"(kMask), "n"(kMagic));
    const half2 h = *reinterpret_cast<const half2*>(&pair);
    out[2 * p] = __low2half(h);
    out[2 * p + 1] = __high2half(h);
  }
}

#define LOWBIT_DECODE(BITS) \
  extern "C" __device__ __forceinline__ int lowbit_decode_u##BITS##_magic(uint32_t word, half* out) { \
    lowbit_decode_magic<BITS>(word, out); \
    return 0; /* TVM evaluates extern calls as expressions: an int, not void */ \
  }
LOWBIT_DECODE(1)
LOWBIT_DECODE(2)
LOWBIT_DECODE(3)
LOWBIT_DECODE(4)
LOWBIT_DECODE(5)
LOWBIT_DECODE(6)
LOWBIT_DECODE(7)
LOWBIT_DECODE(8)
#undef LOWBIT_DECODE

#endif  // LOWBIT_CUDA_DECODE_CUH_
