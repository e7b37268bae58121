// A test allocation: n elements that start `offset` elements past a guard
// region, with a guard region after them. The guards hold 0xFF bytes (a NaN
// in every floating-point type, so a stray read poisons a result) and, under
// AddressSanitizer, are poisoned, so that a stray read or write stops the
// program where it happens. intact() checks that no guard byte changed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define HOST_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOST_TEST_ASAN 1
#endif
#endif
#if defined(HOST_TEST_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace host_test {

template <typename E>
class Guarded {
 public:
  static constexpr size_t kGuard = 64;  // bytes on each side (keeps 16-byte alignment)

  Guarded(size_t n, int offset) : n_(n), lead_(kGuard + offset * sizeof(E)) {
    bytes_ = lead_ + n * sizeof(E) + kGuard;
    base_ = static_cast<unsigned char*>(std::malloc(bytes_));
    if (base_ == nullptr) throw std::bad_alloc();
    std::memset(base_, 0xFF, bytes_);
    poison(true);
  }
  ~Guarded() {
    poison(false);
    std::free(base_);
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;

  E* data() { return reinterpret_cast<E*>(base_ + lead_); }
  const E* data() const { return reinterpret_cast<const E*>(base_ + lead_); }
  size_t size() const { return n_; }
  E& operator[](size_t i) { return data()[i]; }
  const E& operator[](size_t i) const { return data()[i]; }

  std::vector<E> copy() const { return std::vector<E>(data(), data() + n_); }
  bool same_bytes(const std::vector<E>& saved) const {
    return n_ == 0 || std::memcmp(data(), saved.data(), n_ * sizeof(E)) == 0;
  }

  bool intact() {
    poison(false);
    bool ok = true;
    for (size_t i = 0; i < lead_ && ok; ++i) ok = base_[i] == 0xFF;
    for (size_t i = lead_ + n_ * sizeof(E); i < bytes_ && ok; ++i) ok = base_[i] == 0xFF;
    poison(true);
    return ok;
  }

 private:
  void poison(bool on) {
#if defined(HOST_TEST_ASAN)
    // The shadow memory works in 8-byte granules: a guard that shares its
    // granule with data stays readable there (the 0xFF check covers it).
    const size_t lead = lead_ & ~size_t{7};
    const size_t tail = lead_ + n_ * sizeof(E);
    if (on) {
      ASAN_POISON_MEMORY_REGION(base_, lead);
      ASAN_POISON_MEMORY_REGION(base_ + tail, bytes_ - tail);
    } else {
      ASAN_UNPOISON_MEMORY_REGION(base_, bytes_);
    }
#else
    (void)on;
#endif
  }

  size_t n_, lead_, bytes_;
  unsigned char* base_;
};

}  // namespace host_test
