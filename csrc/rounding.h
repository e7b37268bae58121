// Stochastic rounding of float32 to bfloat16, with random bits that every path
// can reproduce: a counter-based hash of (seed, step, tensor, stream, element),
// not a generator's state. Every path computes the same random bits from the
// torch-op twin (lossopt_cuda/_rounding.py) to the kernels, so paths that
// round the same float32 values write the same bfloat16 ones, and a checkpoint
// resumes exactly. Host-and-device code with no 16-bit type: the result is the
// bfloat16's bit pattern.
//
// The hash is 32-bit integer arithmetic (mod 2^32): mix32 is the "lowbias32"
// finaliser with the constants of the hash prospector's best two-round
// 32-bit function (xorshift 16, multiply, xorshift 15, multiply, xorshift 15).
//   streams:    what is written for one parameter: stream k is its k-th
//               state, stream K (the rule's number of states) the parameter;
//               streams 2j and 2j + 1 form pair j, which shares one hash;
//   tensor_key: chained mix32 over seed (low, high), step (low, high), tensor
//               and pair (stream / 2), once per tensor written;
//   element_bits: mix32(mix32(key ^ index_high) ^ index_low), per element,
//               index = the element's offset from the tensor's first element
//               in memory (sum of index * stride): the flat position for
//               dense tensors, whatever their layout;
//   stream_bits: the even stream takes the hash's high 16 bits, the odd one
//               its low 16 bits (lowbias32 mixes every output bit, so the two
//               halves are independent enough for rounding).
// One 32-bit hash per element serves two 16-bit streams: AdamL with rounded
// parameters and state hashes twice per element, not three times (the hash
// was about 40 % of that step on the CPU).
// Rounding adds the stream's 16 random bits to the float's low bits and
// truncates: the magnitude rounds up with probability (dropped bits) / 2^16,
// so the expected value of the result is the float itself (to the resolution
// of 16 bits).
#pragma once

#include "rules/common.h"

#if !defined(__CUDACC_RTC__)
#include <cstring>
#endif

namespace lossopt::rounding {

constexpr uint32_t kKeyInit = 0x243F6A88u;  // the first hex digits of pi
constexpr uint32_t kMul1 = 0x21F0AAADu;
constexpr uint32_t kMul2 = 0xD35A2D97u;
// The bfloat16 NaN torch writes (c10::BFloat16's round to nearest even): one
// pattern for every NaN on every path (CUDA's conversion would keep the payload).
constexpr uint16_t kBF16NaN = 0x7FC0u;

LOSSOPT_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= kMul1;
  x ^= x >> 15;
  x *= kMul2;
  x ^= x >> 15;
  return x;
}

LOSSOPT_HD uint32_t tensor_key(uint64_t seed, uint64_t step, uint32_t tensor, uint32_t pair) {
  uint32_t h = kKeyInit;
  h = mix32(h ^ static_cast<uint32_t>(seed));
  h = mix32(h ^ static_cast<uint32_t>(seed >> 32));
  h = mix32(h ^ static_cast<uint32_t>(step));
  h = mix32(h ^ static_cast<uint32_t>(step >> 32));
  h = mix32(h ^ tensor);
  h = mix32(h ^ pair);
  return h;
}

// The key of the 2^32 elements whose index has these high 32 bits: a driver
// computes it once per chunk (chunks never straddle a multiple of 2^32).
LOSSOPT_HD uint32_t block_key(uint32_t key, uint64_t index) {
  return mix32(key ^ static_cast<uint32_t>(index >> 32));
}

LOSSOPT_HD uint32_t element_bits(uint32_t block, uint64_t index) {
  return mix32(block ^ static_cast<uint32_t>(index));
}

// The pair of hash streams that stream `stream` belongs to (tensor_key's input).
LOSSOPT_HD uint32_t stream_pair(uint32_t stream) { return stream >> 1; }

// The 16 random bits of `stream` from its pair's element_bits, as the high
// half of a word (what bf16_stochastic reads).
LOSSOPT_HD uint32_t stream_bits(uint32_t bits, uint32_t stream) {
  return (stream & 1u) != 0 ? bits << 16 : bits & 0xFFFF0000u;
}

LOSSOPT_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

LOSSOPT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// The hash keys of one chunk of a tensor (a chunk lies within one block of
// 2^32 elements): one per stream pair, kPairs pairs for streams 0..2 kPairs - 1.
// The drivers (CPU and CUDA kernels) build it once per chunk; bits() gives an
// element its stream's random bits, the two streams of a pair from one hash.
template <int kPairs>
struct ChunkKeys {
  uint32_t block[kPairs] = {};

  ChunkKeys() = default;
  LOSSOPT_HD ChunkKeys(uint64_t seed, uint64_t step, uint32_t tensor, uint64_t chunk_begin) {
    LOSSOPT_UNROLL
    for (int j = 0; j < kPairs; ++j) {
      block[j] = block_key(tensor_key(seed, step, tensor, static_cast<uint32_t>(j)), chunk_begin);
    }
  }

  LOSSOPT_HD uint32_t bits(int stream, uint64_t index) const {
    return stream_bits(element_bits(block[stream_pair(static_cast<uint32_t>(stream))], index),
                       static_cast<uint32_t>(stream));
  }
};

// x rounded to bfloat16 stochastically with the random bits r (its high 16
// bits; stream_bits): the bfloat16's bits. Infinities stay infinite; NaN becomes kBF16NaN. (A non-NaN float's
// bits plus 0xFFFF cannot carry out of 32 bits: the largest is -inf's.)
LOSSOPT_HD uint16_t bf16_stochastic(float x, uint32_t r) {
  if (x != x) return kBF16NaN;
  return static_cast<uint16_t>((float_bits(x) + (r >> 16)) >> 16);
}

// A bfloat16's bits widened to float32 (exact).
LOSSOPT_HD float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace lossopt::rounding
