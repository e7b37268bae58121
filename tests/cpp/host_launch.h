// Runs a planned launch on the CPU the way the GPU runs the kernel: the
// metadata copied (a kernel argument is passed by value), then the functor
// called for every block and every thread of the launch, in an order the
// test chooses. On the GPU the threads run concurrently, so a correct kernel
// must give the same result in any order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "cuda/mta_plan.h"

namespace host_test {

enum class Order { kForward, kReverse, kShuffled };

inline const char* order_name(Order o) {
  return o == Order::kForward ? "forward" : o == Order::kReverse ? "reverse" : "shuffled";
}

struct HostLaunch {
  Order order;
  uint64_t seed;
  int* launches;  // counts the launches made

  template <int Depth, typename Functor>
  void operator()(const lossopt::cuda::mta::TensorListMetadata<Depth>& meta, int n_blocks,
                  const Functor& functor) const {
    namespace mta = lossopt::cuda::mta;
    using Meta = mta::TensorListMetadata<Depth>;
    ++*launches;
    HOST_CHECK(n_blocks >= 1 && n_blocks <= Meta::kMaxBlocks, "launch",
               "n_blocks " + std::to_string(n_blocks));
    const Meta copy = meta;  // by value, as the kernel argument
    std::vector<std::pair<unsigned, unsigned>> positions;
    positions.reserve(static_cast<size_t>(n_blocks) * mta::kBlockSize);
    for (int b = 0; b < n_blocks; ++b) {
      for (int t = 0; t < mta::kBlockSize; ++t) positions.emplace_back(b, t);
    }
    if (order == Order::kReverse) std::reverse(positions.begin(), positions.end());
    if (order == Order::kShuffled) {
      std::mt19937_64 rng(seed + static_cast<uint64_t>(*launches));
      std::shuffle(positions.begin(), positions.end(), rng);
    }
    for (const auto& [b, t] : positions) {
      functor(copy, mta::Position{b, t, static_cast<unsigned>(mta::kBlockSize)});
    }
  }
};

}  // namespace host_test
