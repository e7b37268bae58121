// Exactly once: a rule that counts its visits, passed through the real
// functor (rule_functor.h) and the real launcher (updates.h, mta_plan.h),
// shows that every element of every tensor is visited once and nothing else.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/updates.h"
#include "guarded.h"
#include "tests.h"

namespace host_test {
namespace {

struct CountArgs {};

// state += 1 and p += 1 per visit.
template <typename V>
struct CountRule {
  static constexpr int kStates = 1;
  template <typename S>
  CountRule(const S*, const CountArgs&) {}
  void operator()(V& p, const V&, V* state) const {
    state[0] = state[0] + V(1);
    p = p + V(1);
  }
};

template <typename T, bool kMaster>
void count(const std::vector<int64_t>& sizes, Order order, std::mt19937_64& rng) {
  namespace updates = lossopt::cuda::updates;
  const std::string where = std::string("coverage ") + (kMaster ? "float16+master" : "float32") +
                            " order=" + order_name(order) + " tensors=" +
                            std::to_string(sizes.size());
  std::vector<std::unique_ptr<Guarded<T>>> p, g;
  std::vector<std::unique_ptr<Guarded<float>>> st, mw;
  lossopt::cuda::TensorLists lists;
  lists.param_type = kMaster ? lossopt::cuda::ParamType::kFloat16 : lossopt::cuda::ParamType::kFloat32;
  lists.master = kMaster;
  lists.stream = nullptr;
  for (const int64_t n : sizes) {
    p.push_back(std::make_unique<Guarded<T>>(n, 0));
    g.push_back(std::make_unique<Guarded<T>>(n, 0));
    st.push_back(std::make_unique<Guarded<float>>(n, 0));
    std::memset(p.back()->data(), 0, n * sizeof(T));
    std::memset(g.back()->data(), 0, n * sizeof(T));
    std::memset(st.back()->data(), 0, n * sizeof(float));
    std::vector<void*> row{p.back()->data(), g.back()->data(), st.back()->data()};
    if (kMaster) {
      mw.push_back(std::make_unique<Guarded<float>>(n, 0));
      std::memset(mw.back()->data(), 0, n * sizeof(float));
      row.push_back(mw.back()->data());
    }
    lists.tensors.push_back(row);
    lists.numel.push_back(n);
  }
  Guarded<double> scalars(2, 0);
  scalars[0] = 1.0;
  scalars[1] = 1.0;
  lists.scalars = scalars.data();
  int launches = 0;
  updates::launch_rule<T, CountRule<float>, kMaster, float, false>(lists, CountArgs{}, 2, "count",
                                                      HostLaunch{order, rng(), &launches});
  for (size_t t = 0; t < sizes.size(); ++t) {
    bool guards = p[t]->intact() && g[t]->intact() && st[t]->intact() && (!kMaster || mw[t]->intact());
    HOST_CHECK(guards, where, "guard bytes of tensor " + std::to_string(t) + " changed");
    for (int64_t i = 0; i < sizes[t]; ++i) {
      const float visits = (*st[t])[i];
      const float p_now = kMaster ? (*mw[t])[i] : static_cast<float>(lossopt::cuda::to_float((*p[t])[i]));
      if (visits != 1.0f || p_now != 1.0f) {
        fail(where, "tensor " + std::to_string(t) + " (n=" + std::to_string(sizes[t]) +
                        ") element " + std::to_string(i) + " visited " +
                        std::to_string(visits) + " times");
        break;
      }
    }
  }
  HOST_CHECK(scalars.intact(), where, "the scalar vector's guards changed");
}

}  // namespace

void run_coverage(const std::vector<int64_t>& sizes, Order order, bool half_master,
                  std::mt19937_64& rng) {
  if (half_master) {
    count<__half, true>(sizes, order, rng);
  } else {
    count<float, false>(sizes, order, rng);
  }
}

}  // namespace host_test
