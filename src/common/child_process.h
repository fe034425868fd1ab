// Runs a piece of work in a forked child process, so that a crash inside a library (SentencePiece
// has crashed on user text) becomes an error the caller can explain instead of killing the run.
#pragma once
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

namespace pcmoe {

// The child died (a signal, or an exit without an answer) instead of answering.
struct ChildCrashed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs `work` in a child and returns the bytes it returned. If `work` throws, its message comes
// back as a std::runtime_error; if the child dies, ChildCrashed says how ("signal 11,
// Segmentation fault"). The child shares nothing with this process afterwards: whatever it
// changes in memory is lost, so `work` must hand back all it produces in the returned bytes.
inline std::string run_in_child(const std::function<std::string()>& work) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
  // A library that exit()s in the child flushes the child's copy of the stdio buffers: empty them
  // first so that nothing is printed twice.
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    throw std::runtime_error(std::string("cannot fork: ") + std::strerror(err));
  }
  if (pid == 0) {
    ::close(fds[0]);
    // One tag byte ('R' result, 'E' error message), then the payload.
    std::string answer;
    try {
      answer = "R" + work();
    } catch (const std::exception& e) {
      answer = std::string("E") + e.what();
    }
    for (size_t done = 0; done < answer.size();) {
      const ssize_t n = ::write(fds[1], answer.data() + done, answer.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ::_exit(1);
      done += static_cast<size_t>(n);
    }
    // _exit: no atexit handlers or static destructors of the parent's state run twice.
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string answer;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    answer.append(buffer, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    throw ChildCrashed("signal " + std::to_string(sig) + ", " + ::strsignal(sig));
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code != 0 || answer.empty()) throw ChildCrashed("exit status " + std::to_string(code) + " without an answer");
  if (answer[0] == 'E') throw std::runtime_error(answer.substr(1));
  return answer.substr(1);
}

}  // namespace pcmoe
