// The plan of a multi-tensor launch alone (csrc/cuda/mta_plan.h), with fake
// addresses and no memory, so that tensors of more than 2^31 elements and
// lists of hundreds of groups cost nothing; and the lists the launcher must
// refuse before it launches anything.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/updates.h"
#include "guarded.h"
#include "tests.h"

namespace host_test {
namespace {

namespace mta = lossopt::cuda::mta;

void* fake_address(size_t group, int slot) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(0x100000000ull * (slot + 1) + 0x40 * (group + 1)));
}

// The group whose slot-0 address is `a` (numel.size() or more: none).
size_t group_of(const void* a) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(a) - 0x100000000ull;
  return u % 0x40 == 0 && u >= 0x40 ? u / 0x40 - 1 : SIZE_MAX;
}

template <int Depth>
void check_plan(const std::vector<int64_t>& numel, const std::string& label) {
  using Meta = mta::TensorListMetadata<Depth>;
  const std::string where = "plan depth=" + std::to_string(Depth) + " " + label;
  std::vector<std::vector<void*>> tensors(numel.size());
  for (size_t t = 0; t < numel.size(); ++t) {
    for (int d = 0; d < Depth; ++d) tensors[t].push_back(fake_address(t, d));
  }
  mta::check_tensor_lists<Depth>(tensors, numel, "plan");
  std::vector<int64_t> next_chunk(numel.size(), 0);
  int launches = 0;
  bool last_was_full = true;  // every launch but the last must be full
  long errors = 0;
  auto error = [&](const std::string& what) {
    if (errors++ < 5) fail(where, "launch " + std::to_string(launches) + ": " + what);
  };
  mta::plan_launches<Depth>(tensors, numel, [&](const Meta& meta, int n_blocks) {
    if (!last_was_full) error("an earlier launch was neither block- nor tensor-full");
    ++launches;
    if (n_blocks < 1 || n_blocks > Meta::kMaxBlocks) error("n_blocks " + std::to_string(n_blocks));
    int slots = 0;
    for (int b = 0; b < n_blocks; ++b) {
      const mta::ChunkInfo c = mta::chunk_info(meta, b);
      slots = std::max(slots, c.tensor + 1);
      if (c.tensor >= Meta::kMaxTensors) { error("slot out of range"); continue; }
      const size_t t = group_of(meta.addresses[0][c.tensor]);
      if (t >= numel.size()) { error("an address not in the list"); continue; }
      for (int d = 0; d < Depth; ++d) {
        if (meta.addresses[d][c.tensor] != tensors[t][d]) error("addresses of one group mixed");
      }
      if (meta.numel[c.tensor] != numel[t]) error("numel of group " + std::to_string(t));
      const int64_t chunk = c.offset / mta::kChunkSize;
      if (c.offset % mta::kChunkSize != 0 || chunk != next_chunk[t]) {
        error("group " + std::to_string(t) + ": chunk " + std::to_string(chunk) + ", expected " +
              std::to_string(next_chunk[t]));
      }
      next_chunk[t] = chunk + 1;
      const int64_t want_n = std::min<int64_t>(mta::kChunkSize, numel[t] - c.offset);
      if (c.n != want_n || c.n <= 0) error("chunk length " + std::to_string(c.n));
      if (mta::chunk_ptr<float>(meta, 0, c) != static_cast<float*>(tensors[t][0]) + c.offset) {
        error("chunk_ptr");
      }
    }
    last_was_full = n_blocks == Meta::kMaxBlocks || slots == Meta::kMaxTensors;
  });
  for (size_t t = 0; t < numel.size(); ++t) {
    const int64_t chunks = (numel[t] + mta::kChunkSize - 1) / mta::kChunkSize;
    if (next_chunk[t] != chunks) {
      error("group " + std::to_string(t) + " (n=" + std::to_string(numel[t]) + "): " +
            std::to_string(next_chunk[t]) + " of " + std::to_string(chunks) + " chunks planned");
    }
  }
  bool any = false;
  for (const int64_t n : numel) any = any || n > 0;
  if (!any && launches != 0) error("a launch for empty lists");
}

std::vector<int64_t> random_sizes(std::mt19937_64& rng, size_t count) {
  const int64_t C = mta::kChunkSize;
  std::vector<int64_t> sizes;
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_int_distribution<int64_t> small(1, 5000), k(1, 40), rest(0, C - 1);
  for (size_t i = 0; i < count; ++i) {
    switch (kind(rng)) {
      case 0: sizes.push_back(0); break;
      case 1: sizes.push_back(C + (k(rng) % 3) - 1); break;
      case 2: sizes.push_back(k(rng) * C + rest(rng)); break;
      case 3: sizes.push_back(k(rng) * C); break;
      case 4: sizes.push_back((int64_t{1} << 31) + rest(rng) - C / 2); break;  // about 2^31
      default: sizes.push_back(small(rng)); break;
    }
  }
  return sizes;
}

template <int Depth>
void plan_suite(std::mt19937_64& rng) {
  const int64_t C = mta::kChunkSize;
  using Meta = mta::TensorListMetadata<Depth>;
  check_plan<Depth>({}, "no groups");
  check_plan<Depth>({0, 0, 0}, "all empty");
  check_plan<Depth>({1}, "one element");
  check_plan<Depth>({(int64_t{1} << 31) + 7, 3, (int64_t{3} << 31) + C + 1}, "over 2^31");
  check_plan<Depth>({int64_t{1} << 36}, "2^36 elements");
  check_plan<Depth>({Meta::kMaxBlocks * C}, "exactly the block limit");
  check_plan<Depth>({Meta::kMaxBlocks * C + 1, 5}, "one chunk over the block limit");
  std::vector<int64_t> many(Meta::kMaxTensors * 3 + 1, 17);
  check_plan<Depth>(many, "3x the tensor limit + 1");
  std::vector<int64_t> straddle(Meta::kMaxTensors - 1, 1);
  straddle.push_back(3 * C);  // fills the tensors on its first chunk, not its last
  straddle.push_back(2);
  check_plan<Depth>(straddle, "a group at the tensor limit with more chunks");
  for (int r = 0; r < 4; ++r) {
    std::uniform_int_distribution<size_t> count(100, 500);
    check_plan<Depth>(random_sizes(rng, count(rng)), "random list " + std::to_string(r));
  }
}

// A refused call throws std::invalid_argument, launches nothing and writes nothing.
void expect_refused(const lossopt::cuda::TensorLists& lists, const std::string& label,
                    Guarded<float>& watched) {
  const std::vector<float> before = watched.copy();
  int launches = 0;
  bool threw = false;
  try {
    lossopt::cuda::updates::adalo(lists, lossopt::rules::AdaLoArgs{0.9, 0.0},
                                  HostLaunch{Order::kForward, 1, &launches});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  HOST_CHECK(threw, "refusal " + label, "no std::invalid_argument");
  HOST_CHECK(launches == 0, "refusal " + label, std::to_string(launches) + " launches");
  HOST_CHECK(watched.same_bytes(before) && watched.intact(), "refusal " + label, "memory changed");
}

}  // namespace

void run_plan_tests(std::mt19937_64& rng) {
  plan_suite<1>(rng);
  plan_suite<2>(rng);
  plan_suite<3>(rng);
  plan_suite<4>(rng);
  plan_suite<5>(rng);
}

void run_refusal_tests() {
  using lossopt::cuda::ParamType;
  Guarded<float> p(100, 0), g(100, 0), m(100, 0);
  for (size_t i = 0; i < 100; ++i) p[i] = g[i] = m[i] = static_cast<float>(i);
  Guarded<double> scalars(3, 0);
  scalars[0] = 1.0;
  scalars[1] = 1.0;
  scalars[2] = 0.1;
  auto base = [&]() {
    lossopt::cuda::TensorLists lists;
    lists.param_type = ParamType::kFloat32;
    lists.master = false;
    lists.tensors = {{p.data(), g.data(), m.data()}, {p.data() + 50, g.data() + 50, m.data() + 50}};
    lists.numel = {50, 50};
    lists.scalars = scalars.data();
    lists.stream = nullptr;
    return lists;
  };
  auto lists = base();
  lists.tensors[1].pop_back();
  expect_refused(lists, "a group with a missing state", p);
  lists = base();
  lists.numel[1] = -1;
  expect_refused(lists, "a negative size", p);
  lists = base();
  lists.tensors[1][2] = nullptr;
  expect_refused(lists, "a null address", p);
  lists = base();
  lists.numel.pop_back();
  expect_refused(lists, "fewer sizes than groups", p);
  lists = base();
  lists.scalars = nullptr;
  expect_refused(lists, "null scalars", p);
  lists = base();
  lists.master = true;  // float32 parameters have no master: the depth is wrong
  lists.param_type = ParamType::kFloat16;
  expect_refused(lists, "master weights missing", p);
  // Stochastic rounding: the state storage is the lists' (bfloat16 bits here),
  // and every rounded call needs its counter and one tensor id per group.
  int64_t step = 7;
  lists = base();
  lists.rounding.bf16_states = true;
  lists.rounding.tensor_ids = {0, 1};
  expect_refused(lists, "rounding without a step counter", p);
  lists.rounding.step = &step;
  lists.rounding.tensor_ids = {0};
  expect_refused(lists, "one tensor id for two groups", p);
  lists = base();
  lists.rounding.step = &step;
  lists.rounding.tensor_ids = {0, 1};
  lists.rounding.params = true;  // float32 parameters are not rounded
  expect_refused(lists, "rounded float32 parameters", p);
  lists.param_type = ParamType::kBFloat16;
  lists.master = true;
  expect_refused(lists, "rounded parameters with master weights", p);
  // Empty lists launch nothing and need no scalars; a malformed empty list
  // is still refused.
  lists = base();
  lists.numel = {0, 0};
  lists.scalars = nullptr;
  int launches = 0;
  lossopt::cuda::updates::adalo(lists, lossopt::rules::AdaLoArgs{0.9, 0.0},
                                HostLaunch{Order::kForward, 1, &launches});
  HOST_CHECK(launches == 0, "refusal empty lists", "launched");
  lists.tensors[0].pop_back();
  expect_refused(lists, "a malformed empty list", p);
}

}  // namespace host_test
