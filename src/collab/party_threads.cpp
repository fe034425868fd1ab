#include "collab/party_threads.h"

#include "tensor/gemm.h"

namespace pcmoe {

PartyThreads::PartyThreads(int n_parties, int threads) : errors_(n_parties) {
  for (int p = 0; p < n_parties; ++p) threads_.emplace_back([this, p, threads] { loop(p, threads); });
}

PartyThreads::~PartyThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void PartyThreads::run(const std::function<void(int)>& job) {
  std::unique_lock<std::mutex> lock(mu_);
  job_ = &job;
  running_ = (int)threads_.size();
  for (std::exception_ptr& e : errors_) e = nullptr;
  ++generation_;
  start_.notify_all();
  done_.wait(lock, [this] { return running_ == 0; });
  job_ = nullptr;
  for (const std::exception_ptr& e : errors_)
    if (e) std::rethrow_exception(e);
}

void PartyThreads::loop(int party, int threads) {
  set_num_threads(threads);
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_.wait(lock, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
      job = job_;
    }
    std::exception_ptr error;
    try {
      (*job)(party);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mu_);
    errors_[party] = error;
    if (--running_ == 0) done_.notify_all();
  }
}

}  // namespace pcmoe
