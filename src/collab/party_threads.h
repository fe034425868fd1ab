// One thread per party, for concurrent rounds: the simulation runs every party's turn of a round
// at once, as the deployment does in its processes.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pcmoe {

class PartyThreads {
 public:
  // n_parties threads, each computing with `threads` threads of its own (set_num_threads: the
  // products and OpenMP loops), kept for the run.
  PartyThreads(int n_parties, int threads);
  ~PartyThreads();
  PartyThreads(const PartyThreads&) = delete;
  PartyThreads& operator=(const PartyThreads&) = delete;
  // Calls job(p) on party p's thread for every party at once; returns when all have returned.
  // If any threw, rethrows the exception of the lowest party that did (after all are done).
  void run(const std::function<void(int party)>& job);

 private:
  void loop(int party, int threads);
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int running_ = 0;
  bool quit_ = false;
  std::vector<std::exception_ptr> errors_;
};

}  // namespace pcmoe
