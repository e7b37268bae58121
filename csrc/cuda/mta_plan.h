// The plan of a multi-tensor launch, in code that the host compiler and nvcc
// both compile: the metadata that packs the addresses of many tensor groups
// (param, grad, states...) into one kernel argument, the split of every
// tensor into fixed-size chunks (one block per chunk), as many launches as
// the metadata limits require, and the helpers a block uses to find its
// chunk. It knows nothing about any update rule, and nothing about how a
// launch happens: multi_tensor_apply.cuh launches on the GPU, the host test of
// the kernels (tests/cpp/) runs every block and thread on the CPU.
//
// Design after PyTorch's aten/src/ATen/native/cuda/MultiTensorApply.cuh.
// No CUDA header at all, so that any compiler can take it.
#pragma once

#include "../rules/common.h"

#if !defined(__CUDACC_RTC__)  // the plan is host code; NVRTC compiles device code only
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>
#endif

namespace lossopt::cuda::mta {

constexpr int64_t kChunkSize = 65536;  // elements per block
constexpr int kBlockSize = 512;        // threads per block
constexpr int kILP = 4;                // elements per thread per iteration

// Limits per launch, indexed by depth - 1 (depth = tensors per group). They
// keep the metadata under the classic 4 KB kernel-argument limit.
constexpr int kMaxDepth = 5;
constexpr int kDepthToMaxTensors[kMaxDepth] = {110, 64, 48, 36, 30};
constexpr int kDepthToMaxBlocks[kMaxDepth] = {320, 320, 320, 320, 320};

template <int Depth>
struct TensorListMetadata {
  static_assert(Depth >= 1 && Depth <= kMaxDepth, "unsupported depth");
  static constexpr int kDepth = Depth;
  static constexpr int kMaxTensors = kDepthToMaxTensors[Depth - 1];
  static constexpr int kMaxBlocks = kDepthToMaxBlocks[Depth - 1];
  static_assert(kMaxTensors <= 256, "block_to_tensor is an unsigned char");

  void* addresses[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  // Each slot's tensor number in the optimizer's order: the stochastic
  // rounding hash's tensor (../rounding.h); 0 where nothing is rounded.
  uint32_t tensor_id[kMaxTensors];
  unsigned char block_to_tensor[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};

static_assert(sizeof(TensorListMetadata<2>) <= 4096, "metadata over 4 KB");
static_assert(sizeof(TensorListMetadata<3>) <= 4096, "metadata over 4 KB");
static_assert(sizeof(TensorListMetadata<4>) <= 4096, "metadata over 4 KB");
static_assert(sizeof(TensorListMetadata<5>) <= 4096, "metadata over 4 KB");

#if !defined(__CUDACC_RTC__)
// Checks that every group has exactly Depth addresses, that the sizes are sane,
// that no non-empty tensor has a null address and that the tensor ids are
// none or one per group. Throws std::invalid_argument.
template <int Depth>
void check_tensor_lists(const std::vector<std::vector<void*>>& tensors,
                        const std::vector<int64_t>& numel, const char* name,
                        const std::vector<uint32_t>& ids = {}) {
  const auto fail = [name](const std::string& msg) {
    throw std::invalid_argument(std::string(name) + ": " + msg);
  };
  if (tensors.size() != numel.size()) {
    fail(std::to_string(tensors.size()) + " tensor groups but " +
         std::to_string(numel.size()) + " sizes");
  }
  if (!ids.empty() && ids.size() != tensors.size()) {
    fail(std::to_string(tensors.size()) + " tensor groups but " + std::to_string(ids.size()) +
         " tensor ids");
  }
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (tensors[t].size() != static_cast<size_t>(Depth)) {
      fail("tensor group " + std::to_string(t) + " has " + std::to_string(tensors[t].size()) +
           " addresses, expected " + std::to_string(Depth));
    }
    if (numel[t] < 0) fail("tensor group " + std::to_string(t) + " has a negative size");
    if (numel[t] > 0) {
      for (int d = 0; d < Depth; ++d) {
        if (tensors[t][d] == nullptr) {
          fail("tensor group " + std::to_string(t) + " has a null address at " +
               std::to_string(d));
        }
      }
    }
  }
}

// The host loop: packs the non-empty groups' chunks into metadata and calls
// launch(meta, n_blocks) each time the metadata is full, then once for the
// remainder. A group whose chunks do not all fit is carried into slot 0 of the
// next launch. No call when every group is empty. Expects checked lists;
// `ids` (none, or one per group) fill tensor_id.
template <int Depth, typename LaunchFn>
void plan_launches(const std::vector<std::vector<void*>>& tensors,
                   const std::vector<int64_t>& numel, LaunchFn&& launch,
                   const std::vector<uint32_t>& ids = {}) {
  using Meta = TensorListMetadata<Depth>;
  Meta meta{};  // value-initialised: unused slots are not garbage
  int loc_tensor = 0;
  int loc_block = 0;

  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = numel[t];
    if (n == 0) continue;

    for (int d = 0; d < Depth; ++d) meta.addresses[d][loc_tensor] = tensors[t][d];
    meta.numel[loc_tensor] = n;
    meta.tensor_id[loc_tensor] = ids.empty() ? 0u : ids[t];
    ++loc_tensor;

    const int64_t chunks = (n + kChunkSize - 1) / kChunkSize;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      meta.block_to_tensor[loc_block] = static_cast<unsigned char>(loc_tensor - 1);
      meta.block_to_chunk[loc_block] = static_cast<int>(chunk);
      ++loc_block;

      const bool last_chunk = chunk == chunks - 1;
      const bool tensors_full = loc_tensor == Meta::kMaxTensors && last_chunk;
      const bool blocks_full = loc_block == Meta::kMaxBlocks;
      if (tensors_full || blocks_full) {
        launch(static_cast<const Meta&>(meta), loc_block);
        loc_block = 0;
        if (last_chunk) {
          loc_tensor = 0;
        } else {
          // This group straddles launches: carry it into slot 0 of the next.
          for (int d = 0; d < Depth; ++d) meta.addresses[d][0] = meta.addresses[d][loc_tensor - 1];
          meta.numel[0] = meta.numel[loc_tensor - 1];
          meta.tensor_id[0] = meta.tensor_id[loc_tensor - 1];
          loc_tensor = 1;
        }
      }
    }
  }
  if (loc_block > 0) launch(static_cast<const Meta&>(meta), loc_block);
}

// Validates the lists (std::invalid_argument, so a bad list launches nothing),
// then calls launch(meta, n_blocks, functor) for every launch of the plan.
// `launch` decides how the blocks run: a CUDA kernel launch
// (multi_tensor_apply.cuh) or a loop on the host (tests/cpp/).
template <int Depth, typename Functor, typename Launch>
void multi_tensor_apply(const std::vector<std::vector<void*>>& tensors,
                        const std::vector<int64_t>& numel, const Functor& functor,
                        const char* name, Launch&& launch,
                        const std::vector<uint32_t>& ids = {}) {
  check_tensor_lists<Depth>(tensors, numel, name, ids);
  plan_launches<Depth>(
      tensors, numel,
      [&](const TensorListMetadata<Depth>& meta, int n_blocks) { launch(meta, n_blocks, functor); },
      ids);
}

#endif  // !__CUDACC_RTC__

// ---------------------------------------------------------------------------
// What a thread uses to find its work.

// A thread's position: block(), thread() and block_dim() (unsigned, as CUDA's
// built-in indices). The GPU's (multi_tensor_apply.cuh) reads the built-ins
// where the functor asks for them: handing the functor their values instead
// made the kernels read them up front, at a cost of up to 6 more registers
// and a lower occupancy. A host loop passes the numbers.
struct Position {
  unsigned block_index, thread_index, block_size;
  LOSSOPT_HD unsigned block() const { return block_index; }
  LOSSOPT_HD unsigned thread() const { return thread_index; }
  LOSSOPT_HD unsigned block_dim() const { return block_size; }
};

// A tensor's chunk as seen by one block: the element offset of the chunk
// (64-bit: a tensor may exceed 2^31 elements) and its length (<= kChunkSize).
struct ChunkInfo {
  int tensor;
  int64_t offset;
  int n;
};

template <int Depth>
LOSSOPT_HD ChunkInfo chunk_info(const TensorListMetadata<Depth>& meta, int block) {
  ChunkInfo c;
  c.tensor = meta.block_to_tensor[block];
  c.offset = static_cast<int64_t>(meta.block_to_chunk[block]) * kChunkSize;
  const int64_t left = meta.numel[c.tensor] - c.offset;
  c.n = static_cast<int>(left < kChunkSize ? left : kChunkSize);
  return c;
}

template <typename T, int Depth>
LOSSOPT_HD T* chunk_ptr(const TensorListMetadata<Depth>& meta, int d, const ChunkInfo& c) {
  return static_cast<T*>(meta.addresses[d][c.tensor]) + c.offset;
}

// kILP elements of T, aligned for one vector access.
template <typename T>
struct alignas(sizeof(T) * kILP) AlignedVec {
  T v[kILP];
};

template <typename T>
LOSSOPT_HD bool is_vec_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(AlignedVec<T>) == 0;
}

}  // namespace lossopt::cuda::mta
