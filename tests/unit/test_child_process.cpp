// Tests of run_in_child (src/common/child_process.h): results, errors and crashes of the child.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>

#include "common/child_process.h"

namespace pcmoe {
namespace {

template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return {};
}

TEST(RunInChild, ReturnsTheChildsBytes) {
  EXPECT_EQ(run_in_child([] { return std::string(); }), "");
  // More than a pipe holds, with every byte value.
  std::string big(5 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + 7);
  EXPECT_EQ(run_in_child([&] { return big; }), big);
}

TEST(RunInChild, ChildMemoryStaysInTheChild) {
  int touched = 0;
  run_in_child([&] {
    touched = 1;
    return std::string("x");
  });
  EXPECT_EQ(touched, 0);
}

TEST(RunInChild, AnExceptionComesBackAsItsMessage) {
  const std::string what = message_of<std::runtime_error>(
      [] { run_in_child([]() -> std::string { throw std::runtime_error("vocabulary size too high"); }); });
  EXPECT_EQ(what, "vocabulary size too high");
}

TEST(RunInChild, ACrashIsAnErrorHere) {
  std::string what = message_of<ChildCrashed>([] {
    run_in_child([]() -> std::string {
      std::signal(SIGSEGV, SIG_DFL);  // a sanitizer's handler would exit instead
      std::raise(SIGSEGV);
      return "unreachable";
    });
  });
  EXPECT_NE(what.find("signal 11"), std::string::npos) << what;
  EXPECT_NE(what.find("Segmentation fault"), std::string::npos) << what;
  what = message_of<ChildCrashed>([] { run_in_child([]() -> std::string { std::exit(255); }); });
  EXPECT_EQ(what, "exit status 255 without an answer");
}

}  // namespace
}  // namespace pcmoe
