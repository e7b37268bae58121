// csrc/rounding.h on given inputs, for tests/test_rounding.py to compare with
// its torch twin (lossopt_cuda/_rounding.py). Not part of the host test
// program (tests/cpp/*.cpp): a separate executable.
//
// stdin, one case per line:  seed step tensor stream index float_bits   (unsigned decimal)
// stdout, one line per case: key stream_bits bfloat16_bits  (key: of the stream's pair)
#include <cinttypes>
#include <cstdio>

#include "rounding.h"

int main() {
  unsigned long long seed, step, index;
  unsigned tensor, stream, xbits;
  while (std::scanf("%llu %llu %u %u %llu %u", &seed, &step, &tensor, &stream, &index, &xbits) == 6) {
    using namespace lossopt::rounding;
    const uint32_t key = tensor_key(seed, step, tensor, stream_pair(stream));
    const uint32_t bits = stream_bits(element_bits(block_key(key, index), index), stream);
    const uint16_t out = bf16_stochastic(bits_float(xbits), bits);
    std::printf("%u %u %u\n", key, bits, static_cast<unsigned>(out));
  }
  return 0;
}
