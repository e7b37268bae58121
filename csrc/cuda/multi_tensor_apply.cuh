// A generic multi-tensor launcher: packs the addresses of many tensor groups
// (param, grad, states...) into a metadata struct passed by value as a kernel
// argument, splits every tensor into fixed-size chunks, and launches one block
// per chunk, as many launches as the metadata limits require. It knows nothing
// about any update rule: the functor it is given does the per-chunk work.
//
// Design after PyTorch's aten/src/ATen/native/cuda/MultiTensorApply.cuh.
// CUDA headers only (no torch), so nvcc stays fast.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>

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
  static constexpr int kMaxTensors = kDepthToMaxTensors[Depth - 1];
  static constexpr int kMaxBlocks = kDepthToMaxBlocks[Depth - 1];
  static_assert(kMaxTensors <= 256, "block_to_tensor is an unsigned char");

  void* addresses[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char block_to_tensor[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};

static_assert(sizeof(TensorListMetadata<2>) <= 4096, "metadata over 4 KB");
static_assert(sizeof(TensorListMetadata<3>) <= 4096, "metadata over 4 KB");
static_assert(sizeof(TensorListMetadata<4>) <= 4096, "metadata over 4 KB");
static_assert(sizeof(TensorListMetadata<5>) <= 4096, "metadata over 4 KB");

// The functor's operator() is a __device__ function taking the metadata (by
// const reference to the kernel argument: no copy, indexed reads from the
// parameter space).
template <int Depth, typename Functor>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_apply_kernel(const TensorListMetadata<Depth> meta, const Functor functor) {
  functor(meta);
}

// Checks that every group has exactly Depth addresses, that the sizes are sane
// and that no non-empty tensor has a null address. Throws std::invalid_argument.
template <int Depth>
void check_tensor_lists(const std::vector<std::vector<void*>>& tensors,
                        const std::vector<int64_t>& numel, const char* name) {
  const auto fail = [name](const std::string& msg) {
    throw std::invalid_argument(std::string(name) + ": " + msg);
  };
  if (tensors.size() != numel.size()) {
    fail(std::to_string(tensors.size()) + " tensor groups but " +
         std::to_string(numel.size()) + " sizes");
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

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": CUDA kernel launch failed: " +
                             cudaGetErrorString(err));
  }
}

// The host loop: packs the non-empty groups' chunks into metadata and calls
// launch(meta, n_blocks) each time the metadata is full, then once for the
// remainder. A group whose chunks do not all fit is carried into slot 0 of the
// next launch. No call when every group is empty. Expects checked lists.
template <int Depth, typename LaunchFn>
void plan_launches(const std::vector<std::vector<void*>>& tensors,
                   const std::vector<int64_t>& numel, LaunchFn&& launch) {
  using Meta = TensorListMetadata<Depth>;
  Meta meta{};  // value-initialised: unused slots are not garbage
  int loc_tensor = 0;
  int loc_block = 0;

  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = numel[t];
    if (n == 0) continue;

    for (int d = 0; d < Depth; ++d) meta.addresses[d][loc_tensor] = tensors[t][d];
    meta.numel[loc_tensor] = n;
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
          loc_tensor = 1;
        }
      }
    }
  }
  if (loc_block > 0) launch(static_cast<const Meta&>(meta), loc_block);
}

// Launches functor over all chunks of all non-empty tensor groups on stream.
// tensors[i] holds Depth addresses; numel[i] elements each. Validates first
// (std::invalid_argument), so a bad list launches nothing; throws
// std::runtime_error if a launch fails. Launches nothing if all are empty.
template <int Depth, typename Functor>
void multi_tensor_apply(const std::vector<std::vector<void*>>& tensors,
                        const std::vector<int64_t>& numel, cudaStream_t stream,
                        const Functor& functor, const char* name) {
  check_tensor_lists<Depth>(tensors, numel, name);
  plan_launches<Depth>(tensors, numel,
                       [&](const TensorListMetadata<Depth>& meta, int n_blocks) {
                         multi_tensor_apply_kernel<Depth, Functor>
                             <<<n_blocks, kBlockSize, 0, stream>>>(meta, functor);
                         check_launch(name);
                       });
}

// ---------------------------------------------------------------------------
// Helpers for chunk functors (host-callable too, for testing the plan).

// A tensor's chunk as seen by one block: the element offset of the chunk
// (64-bit: a tensor may exceed 2^31 elements) and its length (<= kChunkSize).
struct ChunkInfo {
  int tensor;
  int64_t offset;
  int n;
};

template <int Depth>
__host__ __device__ __forceinline__ ChunkInfo chunk_info(const TensorListMetadata<Depth>& meta,
                                                         int block) {
  ChunkInfo c;
  c.tensor = meta.block_to_tensor[block];
  c.offset = static_cast<int64_t>(meta.block_to_chunk[block]) * kChunkSize;
  const int64_t left = meta.numel[c.tensor] - c.offset;
  c.n = static_cast<int>(left < kChunkSize ? left : kChunkSize);
  return c;
}

template <typename T, int Depth>
__host__ __device__ __forceinline__ T* chunk_ptr(const TensorListMetadata<Depth>& meta, int d,
                                                 const ChunkInfo& c) {
  return static_cast<T*>(meta.addresses[d][c.tensor]) + c.offset;
}

// kILP elements of T, aligned for one vector access.
template <typename T>
struct alignas(sizeof(T) * kILP) AlignedVec {
  T v[kILP];
};

template <typename T>
__device__ __forceinline__ bool is_vec_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(AlignedVec<T>) == 0;
}

}  // namespace lossopt::cuda::mta
