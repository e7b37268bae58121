// The host test's failure reporting: count, print the first few with where
// they happened, and let main() exit non-zero if any.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace host_test {

struct Failures {
  long count = 0;
  long printed = 0;
  bool stop_at_first = false;  // exit(1) at the first failure (scripts/plant_bugs.py)
};

inline Failures& failures() {
  static Failures f;
  return f;
}

inline void fail(const std::string& where, const std::string& what) {
  Failures& f = failures();
  ++f.count;
  if (f.printed < 40) {
    ++f.printed;
    std::fprintf(stderr, "FAIL [%s] %s\n", where.c_str(), what.c_str());
  }
  if (f.stop_at_first) std::exit(1);
}

#define HOST_CHECK(cond, where, what)                                                     \
  do {                                                                                   \
    if (!(cond)) ::host_test::fail((where), std::string(#cond " -- ") + (what));         \
  } while (0)

}  // namespace host_test
