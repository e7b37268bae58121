// The launches of launch.h for the CUDA kernels NVRTC compiled on first use
// (nvrtc_kernels.cu, lossopt_cuda/_nvrtc.py): the same validation, dispatch
// and launch plan as the nvcc build (updates.h, mta_plan.h), with each kernel
// found by its name (kernel_list.h) in the compiled code of the current
// device's architecture and launched through the CUDA runtime on the same
// stream. Compiled by the host compiler alone (no nvcc), against the CUDA
// headers and runtime that torch's CUDA wheels bring.
//
// The compiled code (a cubin per architecture) is handed over by Python
// through the lossopt::nvrtc_add_cubin op (ops_cuda.cpp) before the first
// launch; each is loaded once as a context-independent library
// (cudaLibraryLoadData), which serves every device of that architecture.
// No torch header: the host test of the kernels (tests/cpp/) runs this file
// against a CUDA runtime of its own.

#include <cuda_runtime_api.h>

#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernel_list.h"
#include "launch.h"
#include "updates.h"

namespace lossopt::cuda {
namespace {

// The kernel's name in the compiled code, for every functor updates.h
// launches: a functor missing from kernel_list.h has no specialisation.
template <typename Functor>
struct KernelName;
#define LOSSOPT_KERNEL_NAME(name, T, Rule, Args, kMaster, S, kRoundParams)   \
  template <>                                                                 \
  struct KernelName<RuleFunctor<T, Rule, Args, kMaster, S, kRoundParams>> {   \
    static constexpr const char* value = "lossopt_" #name;                    \
  };
LOSSOPT_UPDATE_KERNELS(LOSSOPT_KERNEL_NAME)

template <typename Group>
struct AdvanceKernelName;
#define LOSSOPT_ADVANCE_NAME(name, Group)                   \
  template <>                                               \
  struct AdvanceKernelName<Group> {                         \
    static constexpr const char* value = "lossopt_" #name;  \
  };
LOSSOPT_ADVANCE_KERNELS(LOSSOPT_ADVANCE_NAME)

void check(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(what + ": " + cudaGetErrorString(err));
  }
}

// The compiled code per architecture (major * 10 + minor), and the kernels
// found in it so far.
class Kernels {
 public:
  void add(int arch, const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("lossopt: cannot read the compiled kernels " + path);
    std::vector<char> code((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    const std::lock_guard<std::mutex> lock(mutex_);
    cudaLibrary_t library = nullptr;
    check(cudaLibraryLoadData(&library, code.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
          "lossopt: loading the NVRTC-compiled kernels " + path);
    libraries_[arch] = library;  // a later call for an architecture replaces it
    kernels_.erase(kernels_.lower_bound({arch, ""}), kernels_.lower_bound({arch + 1, ""}));
  }

  // The kernel `name` for the current device.
  cudaKernel_t get(const char* name) {
    int device = 0, major = 0, minor = 0;
    check(cudaGetDevice(&device), "lossopt: cudaGetDevice");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "lossopt");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "lossopt");
    const int arch = major * 10 + minor;
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto key = std::make_pair(arch, std::string(name));
    const auto found = kernels_.find(key);
    if (found != kernels_.end()) return found->second;
    const auto library = libraries_.find(arch);
    if (library == libraries_.end()) {
      throw std::runtime_error("lossopt: no NVRTC-compiled kernels for this GPU (sm_" +
                               std::to_string(arch) + ")");
    }
    cudaKernel_t kernel = nullptr;
    check(cudaLibraryGetKernel(&kernel, library->second, name), std::string("lossopt: kernel ") + name);
    kernels_.emplace(key, kernel);
    return kernel;
  }

 private:
  std::mutex mutex_;
  std::map<int, cudaLibrary_t> libraries_;
  std::map<std::pair<int, std::string>, cudaKernel_t> kernels_;
};

Kernels& kernels() {
  static Kernels* instance = new Kernels();  // never destroyed: libraries outlive exit
  return *instance;
}

// `args` are the addresses of the kernel's arguments, as cudaLaunchKernel takes them.
void launch(const char* kernel_name, const char* op, unsigned n_blocks, unsigned block_size,
            void** args, cudaStream_t stream) {
  const cudaKernel_t kernel = kernels().get(kernel_name);
  check(cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(n_blocks), dim3(block_size),
                         args, 0, stream),
        std::string(op) + ": CUDA kernel launch failed");
}

// The `launch` of mta::multi_tensor_apply: the metadata and the functor by
// value, as the nvcc-built kernel takes them.
struct NvrtcLaunch {
  cudaStream_t stream;
  const char* name;

  template <int Depth, typename Functor>
  void operator()(const mta::TensorListMetadata<Depth>& meta, int n_blocks,
                  const Functor& functor) const {
    void* args[] = {const_cast<mta::TensorListMetadata<Depth>*>(&meta), const_cast<Functor*>(&functor)};
    launch(KernelName<Functor>::value, name, static_cast<unsigned>(n_blocks), mta::kBlockSize, args,
           stream);
  }
};

}  // namespace

void nvrtc_add_cubin(int arch, const std::string& path) { kernels().add(arch, path); }

void adalo(const TensorLists& lists, const rules::AdaLoArgs& args) {
  updates::adalo(lists, args, NvrtcLaunch{lists.stream, "lossopt adalo"});
}

void adaml(const TensorLists& lists, const rules::AdamLArgs& args) {
  updates::adaml(lists, args, NvrtcLaunch{lists.stream, "lossopt adaml"});
}

void adaloss(const TensorLists& lists, const rules::AdaLossArgs& args, bool momentum) {
  updates::adaloss(lists, args, momentum, NvrtcLaunch{lists.stream, "lossopt adaloss"});
}

template <typename Group>
void launch_advance(const AdvanceArgs& args, cudaStream_t stream) {
  AdvanceArgs copy = args;
  void* kernel_args[] = {&copy};
  launch(AdvanceKernelName<Group>::value, Group::kOp, 1, 1, kernel_args, stream);
}

template void launch_advance<rules::AdaLoGroup>(const AdvanceArgs&, cudaStream_t);
template void launch_advance<rules::AdamLGroup>(const AdvanceArgs&, cudaStream_t);
template void launch_advance<rules::AdaLossGroup>(const AdvanceArgs&, cudaStream_t);

}  // namespace lossopt::cuda
