// The host side of the NVRTC build (csrc/cuda/nvrtc_launch.cpp, compiled into
// this program with LOSSOPT_NVRTC_HOST, as the build on first use compiles it)
// against a CUDA runtime of this file's own: cudaLibraryLoadData and
// cudaLibraryGetKernel hand out the kernels of kernel_list.h by name, and
// cudaLaunchKernel runs the named kernel on the CPU, every block and thread
// (host_launch.h), with the arguments exactly as the launcher passed them.
//
// Each update and advance through the launcher is compared, to the bit, with
// the same call made through the plan directly; the kernel it launched is
// checked against the name spelled here for the rule, type, master weights
// and rounding;
// and the registry of compiled code per GPU architecture (loading, the cache
// of kernels, replacing, errors) is exercised.
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "advance.h"
#include "check.h"
#include "cuda/kernel_list.h"
#include "cuda/launch.h"
#include "cuda/updates.h"
#include "tests.h"

namespace host_test {
namespace {

namespace mta = lossopt::cuda::mta;
using lossopt::cuda::ParamType;

// ---------------------------------------------------------------- the fake runtime

using Runner = void (*)(void** args, dim3 grid, dim3 block);

struct KernelEntry {
  const char* name;
  Runner run;
};

struct KernelHandle {  // what cudaLibraryGetKernel hands out
  const KernelEntry* entry;
  const void* library;
};

struct FakeRuntime {
  int major = 9, minor = 0;  // the current device's compute capability
  std::map<const void*, std::string> libraries;  // handle -> the code loaded
  std::deque<KernelHandle> handles;
  std::deque<char> library_ids;                  // their addresses are the handles
  int lookups = 0;
  std::vector<std::string> launched;             // kernel names, in order
  std::vector<std::string> launched_code;        // the code each came from
  cudaError_t launch_result = cudaSuccess;
  // How the kernel's blocks run (host_launch.h).
  Order order = Order::kForward;
  uint64_t seed = 0;
  int launches = 0;
};

FakeRuntime& runtime() {
  static FakeRuntime r;
  return r;
}

template <typename Functor>
void run_update(void** args, dim3 grid, dim3 block) {
  constexpr int kDepth = Functor::kDepth;
  HOST_CHECK(block.x == static_cast<unsigned>(mta::kBlockSize) && block.y == 1 && block.z == 1,
             "nvrtc launch", "block " + std::to_string(block.x));
  HOST_CHECK(grid.y == 1 && grid.z == 1, "nvrtc launch", "a 2-d or 3-d grid");
  const auto& meta = *static_cast<const mta::TensorListMetadata<kDepth>*>(args[0]);
  const auto& functor = *static_cast<const Functor*>(args[1]);
  FakeRuntime& r = runtime();
  HostLaunch{r.order, r.seed, &r.launches}(meta, static_cast<int>(grid.x), functor);
}

template <typename Group>
void run_advance(void** args, dim3 grid, dim3 block) {
  HOST_CHECK(grid.x == 1 && block.x == 1, "nvrtc advance", "not one thread");
  lossopt::advance<Group>(*static_cast<const lossopt::AdvanceArgs*>(args[0]));
}

}  // namespace
}  // namespace host_test

namespace lossopt::cuda {
namespace {
#define HOST_TEST_UPDATE_ENTRY(name, T, Rule, Args, kMaster, S, kRoundParams) \
  {"lossopt_" #name, &host_test::run_update<RuleFunctor<T, Rule, Args, kMaster, S, kRoundParams>>},
#define HOST_TEST_ADVANCE_ENTRY(name, Group) {"lossopt_" #name, &host_test::run_advance<Group>},
const host_test::KernelEntry kKernelTable[] = {
    LOSSOPT_UPDATE_KERNELS(HOST_TEST_UPDATE_ENTRY) LOSSOPT_ADVANCE_KERNELS(HOST_TEST_ADVANCE_ENTRY)};
}  // namespace
}  // namespace lossopt::cuda

// The runtime functions nvrtc_launch.cpp calls (declared by cuda_runtime_api.h).
extern "C" {

const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "fake runtime error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const auto& r = host_test::runtime();
  if (attr == cudaDevAttrComputeCapabilityMajor) *value = r.major;
  else if (attr == cudaDevAttrComputeCapabilityMinor) *value = r.minor;
  else return cudaErrorInvalidValue;
  return cudaSuccess;
}

cudaError_t cudaLibraryLoadData(cudaLibrary_t* library, const void* code, enum cudaJitOption*,
                                void**, unsigned int, enum cudaLibraryOption*, void**, unsigned int) {
  auto& r = host_test::runtime();
  // The launcher hands over the file's bytes; here they are short text.
  const std::string text(static_cast<const char*>(code));
  if (text.rfind("bad", 0) == 0) return cudaErrorInvalidKernelImage;
  r.library_ids.push_back(0);
  const void* id = &r.library_ids.back();
  r.libraries[id] = text;
  *library = reinterpret_cast<cudaLibrary_t>(const_cast<void*>(id));
  return cudaSuccess;
}

cudaError_t cudaLibraryGetKernel(cudaKernel_t* kernel, cudaLibrary_t library, const char* name) {
  auto& r = host_test::runtime();
  ++r.lookups;
  const auto lib = r.libraries.find(library);
  if (lib == r.libraries.end()) return cudaErrorInvalidResourceHandle;
  if (lib->second.find("no kernels") != std::string::npos) return cudaErrorSymbolNotFound;
  for (const auto& entry : lossopt::cuda::kKernelTable) {
    if (std::strcmp(entry.name, name) == 0) {
      r.handles.push_back({&entry, library});
      *kernel = reinterpret_cast<cudaKernel_t>(&r.handles.back());
      return cudaSuccess;
    }
  }
  return cudaErrorSymbolNotFound;
}

cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void** args, size_t shared,
                             cudaStream_t stream) {
  auto& r = host_test::runtime();
  const auto* handle = static_cast<const host_test::KernelHandle*>(func);
  bool known = false;
  for (const auto& h : r.handles) known = known || &h == handle;
  HOST_CHECK(known, "nvrtc launch", "a kernel handle the runtime never handed out");
  if (!known) return cudaErrorInvalidResourceHandle;
  HOST_CHECK(shared == 0, "nvrtc launch", "dynamic shared memory asked for");
  HOST_CHECK(stream == reinterpret_cast<cudaStream_t>(0x5eed), "nvrtc launch", "not the caller's stream");
  r.launched.push_back(handle->entry->name);
  r.launched_code.push_back(r.libraries[handle->library]);
  if (r.launch_result != cudaSuccess) return r.launch_result;
  handle->entry->run(args, grid, block);
  return cudaSuccess;
}

}  // extern "C"

namespace host_test {
namespace {

const auto kStream = reinterpret_cast<cudaStream_t>(0x5eed);

std::string write_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("lossopt_host_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary) << text << '\0';
  return path.string();
}

// Random bytes of valid numbers, in one buffer per tensor.
struct Buffers {
  std::vector<std::vector<unsigned char>> bytes;
};

template <typename T>
std::vector<unsigned char> random_tensor(int64_t n, std::mt19937_64& rng, float low, float high) {
  std::uniform_real_distribution<float> d(low, high);
  std::vector<unsigned char> out(static_cast<size_t>(n) * sizeof(T) + 1);
  for (int64_t i = 0; i < n; ++i) {
    const T v = lossopt::cuda::from_float<T>(d(rng));
    std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
  }
  return out;
}

template <typename T>
Buffers make_buffers(const std::vector<int64_t>& sizes, int states, bool master, bool bf16_states,
                     std::mt19937_64& rng) {
  Buffers b;
  for (const int64_t n : sizes) {
    b.bytes.push_back(random_tensor<T>(n, rng, -1.0f, 1.0f));      // param
    b.bytes.push_back(random_tensor<T>(n, rng, -1.0f, 1.0f));      // grad
    for (int s = 0; s < states; ++s) {
      b.bytes.push_back(bf16_states ? random_tensor<__nv_bfloat16>(n, rng, 0.0f, 1.0f)
                                    : random_tensor<float>(n, rng, 0.0f, 1.0f));
    }
    if (master) b.bytes.push_back(random_tensor<float>(n, rng, -1.0f, 1.0f));
  }
  return b;
}

lossopt::cuda::TensorLists lists_of(Buffers& b, const std::vector<int64_t>& sizes, int depth,
                                    ParamType type, bool master, const double* scalars) {
  lossopt::cuda::TensorLists lists;
  lists.param_type = type;
  lists.master = master;
  lists.scalars = scalars;
  lists.stream = kStream;
  for (size_t t = 0; t < sizes.size(); ++t) {
    std::vector<void*> row;
    for (int d = 0; d < depth; ++d) row.push_back(b.bytes[t * depth + d].data());
    lists.tensors.push_back(row);
    lists.numel.push_back(sizes[t]);
  }
  return lists;
}

const char* rule_name(Rule rule) {
  switch (rule) {
    case Rule::kAdaLo: return "adalo";
    case Rule::kAdamL: return "adaml";
    case Rule::kAdaLoss: return "adaloss";
    case Rule::kAdaLossMomentum: return "adaloss_momentum";
  }
  return "?";
}

const char* type_name(ParamType type) {
  return type == ParamType::kFloat32 ? "f32" : type == ParamType::kFloat16 ? "f16" : "bf16";
}

// The update through the launcher and through the plan directly, on equal
// copies: equal bytes, and the launcher's kernels the ones named for it.
// bf16_states, round_params: stochastic rounding (kernel_list.h's _s16, _sr).
template <typename T>
void compare_update(Rule rule, ParamType type, bool master, std::mt19937_64& rng,
                    bool bf16_states = false, bool round_params = false) {
  namespace updates = lossopt::cuda::updates;
  namespace rules = lossopt::rules;
  const int states = update_states(rule);
  const std::string expected = std::string("lossopt_") + rule_name(rule) + "_" + type_name(type) +
                               (master ? "_master" : "") + (round_params ? "_sr" : "") +
                               (bf16_states && states > 0 ? "_s16" : "");
  const std::string where = "nvrtc " + expected;
  // Over the per-launch tensor limits, some empty, one spanning chunks.
  std::uniform_int_distribution<int64_t> size(0, 700);
  std::vector<int64_t> sizes;
  for (int i = 0; i < 131; ++i) sizes.push_back(i % 29 == 0 ? 0 : size(rng));
  sizes.push_back(2 * mta::kChunkSize + 3);
  const int depth = 2 + states + (master ? 1 : 0);
  Buffers via_launcher = make_buffers<T>(sizes, states, master, bf16_states, rng);
  Buffers direct = via_launcher;
  const double scalars[lossopt::kMaxScalars] = {1.0, 0.5, 1e-3, 0.9, 1e-8, 0.1, 0.01, 0.2};
  auto a = lists_of(via_launcher, sizes, depth, type, master, scalars);
  auto b = lists_of(direct, sizes, depth, type, master, scalars);
  const int64_t step = static_cast<int64_t>(rng());
  if (bf16_states || round_params) {
    lossopt::cuda::RoundingLists rounding;
    rounding.step = &step;
    rounding.seed = rng();
    rounding.bf16_states = bf16_states;
    rounding.params = round_params;
    for (size_t t = 0; t < sizes.size(); ++t) rounding.tensor_ids.push_back(static_cast<uint32_t>(rng()));
    a.rounding = b.rounding = rounding;
  }

  FakeRuntime& r = runtime();
  r.launched.clear();
  r.order = Order::kShuffled;
  r.seed = rng();
  int direct_launches = 0;
  const HostLaunch plain{Order::kForward, 0, &direct_launches};
  switch (rule) {
    case Rule::kAdaLo:
      lossopt::cuda::adalo(a, rules::AdaLoArgs{0.9, 0.01});
      updates::adalo(b, rules::AdaLoArgs{0.9, 0.01}, plain);
      break;
    case Rule::kAdamL:
      lossopt::cuda::adaml(a, rules::AdamLArgs{0.9, 0.999, 0.01});
      updates::adaml(b, rules::AdamLArgs{0.9, 0.999, 0.01}, plain);
      break;
    case Rule::kAdaLoss:
    case Rule::kAdaLossMomentum: {
      const bool momentum = rule == Rule::kAdaLossMomentum;
      lossopt::cuda::adaloss(a, rules::AdaLossArgs{0.9, 0.01}, momentum);
      updates::adaloss(b, rules::AdaLossArgs{0.9, 0.01}, momentum, plain);
      break;
    }
  }
  HOST_CHECK(static_cast<int>(r.launched.size()) == direct_launches && direct_launches > 1, where,
             std::to_string(r.launched.size()) + " launches through the launcher, " +
                 std::to_string(direct_launches) + " planned");
  for (const auto& name : r.launched) HOST_CHECK(name == expected, where, "launched " + name);
  for (size_t i = 0; i < via_launcher.bytes.size(); ++i) {
    if (via_launcher.bytes[i] != direct.bytes[i]) {
      fail(where, "tensor slot " + std::to_string(i) + " differs from the direct plan");
      break;
    }
  }
}

// The group state as the rules keep it: AdaLo's loss EMA (float), AdamL's
// step count (float) and first gap (double), AdaLoss's b^2 (double).
struct GroupState {
  float f = 0.7f;
  double d = 1.3;
};

template <typename Group>
void compare_advance(const char* expected, bool double_first, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> d(0.1, 2.0);
  double loss = d(rng), out[2][lossopt::kMaxScalars] = {};
  GroupState state[2];
  state[0].f = state[1].f = 3.0f;
  state[0].d = state[1].d = d(rng);
  int64_t skips[2] = {0, 0};
  lossopt::AdvanceArgs args[2];
  for (int k = 0; k < 2; ++k) {
    args[k] = lossopt::AdvanceArgs{};
    args[k].loss = &loss;
    args[k].loss_is_double = true;
    args[k].lr = 0.01;
    args[k].skips = &skips[k];
    args[k].state[0] = double_first ? static_cast<void*>(&state[k].d) : static_cast<void*>(&state[k].f);
    args[k].state[1] = &state[k].d;
    for (int h = 0; h < lossopt::kMaxHyper; ++h) args[k].hyper[h] = 0.5;
    args[k].out = out[k];
  }
  FakeRuntime& r = runtime();
  r.launched.clear();
  lossopt::cuda::launch_advance<Group>(args[0], kStream);
  lossopt::advance<Group>(args[1]);
  const std::string where = std::string("nvrtc ") + expected;
  HOST_CHECK(r.launched.size() == 1 && r.launched[0] == expected, where, "not the advance kernel");
  HOST_CHECK(std::memcmp(out[0], out[1], sizeof(out[0])) == 0 && state[0].f == state[1].f &&
                 state[0].d == state[1].d && skips[0] == skips[1],
             where, "differs from advance() called directly");
  HOST_CHECK(out[0][lossopt::kValid] == 1.0, where, "the step was not taken");
}

template <typename F>
std::string error_of(F&& call) {
  try {
    call();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

void run_nvrtc_launch_tests(std::mt19937_64& rng) {
  namespace rules = lossopt::rules;
  FakeRuntime& r = runtime();
  const std::string where = "nvrtc registry";
  float p = 1, g = 1, m = 0;
  const double scalars[lossopt::kMaxScalars] = {1, 1, 1e-3, 0, 0, 0, 0, 0};
  lossopt::cuda::TensorLists one;
  one.param_type = ParamType::kFloat32;
  one.master = false;
  one.tensors = {{&p, &g, &m}};
  one.numel = {1};
  one.scalars = scalars;
  one.stream = kStream;
  auto step = [&] { lossopt::cuda::adalo(one, rules::AdaLoArgs{0.9, 0.0}); };

  // No code for any architecture yet; unreadable and unloadable code.
  HOST_CHECK(contains(error_of(step), "no NVRTC-compiled kernels for this GPU (sm_90)"), where,
             error_of(step));
  HOST_CHECK(contains(error_of([] { lossopt::cuda::nvrtc_add_cubin(90, "/nonexistent/k.cubin"); }),
                      "cannot read"), where, "a missing file was accepted");
  const std::string bad = write_file("bad.cubin", "bad code");
  HOST_CHECK(contains(error_of([&] { lossopt::cuda::nvrtc_add_cubin(90, bad); }), bad), where,
             "unloadable code was accepted");

  // Code per architecture: the current device's is used, its kernels looked up once.
  const std::string sm80 = write_file("80.cubin", "code for sm_80");
  const std::string sm90 = write_file("90.cubin", "code for sm_90");
  lossopt::cuda::nvrtc_add_cubin(80, sm80);
  lossopt::cuda::nvrtc_add_cubin(90, sm90);
  r.launched_code.clear();
  r.major = 8, r.minor = 0;
  step();
  r.major = 9, r.minor = 0;
  step();
  const int lookups = r.lookups;
  step();
  r.major = 8;
  step();
  HOST_CHECK(r.launched_code == std::vector<std::string>({"code for sm_80", "code for sm_90",
                                                          "code for sm_90", "code for sm_80"}),
             where, "the wrong architecture's code ran");
  HOST_CHECK(r.lookups == lookups, where, "a kernel was looked up again");
  HOST_CHECK(p != 1.0f, where, "the step changed nothing");
  r.major = 7, r.minor = 5;
  HOST_CHECK(contains(error_of(step), "(sm_75)"), where, "ran on a GPU without code");

  // New code for an architecture replaces the old, and its kernels are looked up anew.
  const std::string sm90b = write_file("90b.cubin", "new code for sm_90");
  lossopt::cuda::nvrtc_add_cubin(90, sm90b);
  r.major = 9, r.minor = 0;
  r.launched_code.clear();
  step();
  HOST_CHECK(r.launched_code.size() == 1 && r.launched_code[0] == "new code for sm_90", where,
             "the replaced code ran");
  HOST_CHECK(r.lookups == lookups + 1, where, "the replaced code's kernel was not looked up");

  // Code without the kernel, and a launch the runtime refuses.
  const std::string empty = write_file("86.cubin", "no kernels");
  lossopt::cuda::nvrtc_add_cubin(86, empty);
  r.major = 8, r.minor = 6;
  HOST_CHECK(contains(error_of(step), "lossopt: kernel lossopt_adalo_f32"), where, error_of(step));
  r.major = 9, r.minor = 0;
  r.launch_result = cudaErrorLaunchFailure;
  HOST_CHECK(contains(error_of(step), "lossopt adalo: CUDA kernel launch failed"), where,
             error_of(step));
  r.launch_result = cudaSuccess;
  for (const auto& f : {bad, sm80, sm90, sm90b, empty}) std::filesystem::remove(f);

  // Every rule, type and master setting, and every advance, against the plan.
  const Rule kAll[] = {Rule::kAdaLo, Rule::kAdamL, Rule::kAdaLoss, Rule::kAdaLossMomentum};
  for (const Rule rule : kAll) {
    compare_update<float>(rule, ParamType::kFloat32, false, rng);
    compare_update<__half>(rule, ParamType::kFloat16, false, rng);
    compare_update<__half>(rule, ParamType::kFloat16, true, rng);
    compare_update<__nv_bfloat16>(rule, ParamType::kBFloat16, false, rng);
    compare_update<__nv_bfloat16>(rule, ParamType::kBFloat16, true, rng);
    // Every kernel of stochastic rounding (a rule without state has no _s16).
    if (update_states(rule) > 0) {
      compare_update<float>(rule, ParamType::kFloat32, false, rng, true);
      compare_update<__half>(rule, ParamType::kFloat16, false, rng, true);
      compare_update<__half>(rule, ParamType::kFloat16, true, rng, true);
      compare_update<__nv_bfloat16>(rule, ParamType::kBFloat16, false, rng, true);
      compare_update<__nv_bfloat16>(rule, ParamType::kBFloat16, true, rng, true);
      compare_update<__nv_bfloat16>(rule, ParamType::kBFloat16, false, rng, true, true);
    }
    compare_update<__nv_bfloat16>(rule, ParamType::kBFloat16, false, rng, false, true);
  }
  compare_advance<rules::AdaLoGroup>("lossopt_advance_adalo", false, rng);
  compare_advance<rules::AdamLGroup>("lossopt_advance_adaml", false, rng);
  compare_advance<rules::AdaLossGroup>("lossopt_advance_adaloss", true, rng);
}

}  // namespace host_test
