// Concurrent rounds under test: a transport that delivers the calls of several party threads one
// at a time, in an order drawn from a seed, and a snapshot of a whole session as bits.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "collab/session.h"
#include "hosts.h"
#include "tensor/rng.h"

namespace pcmoe::test {

// Wraps the in-process transport. A call waits until every party still in its turn is waiting
// with a call; then one of them, drawn from the seed, goes, alone. So each party's calls keep
// their own order while the parties' calls interleave in a seeded, repeatable order (a run with
// real threads delivers them as they come instead). `delivered` lists the callers in order.
class ShuffledTransport final : public Transport {
 public:
  explicit ShuffledTransport(uint64_t seed) : rng_(seed) {}
  void serve(int party, Handler handler) override { inner_.serve(party, std::move(handler)); }
  // `n` parties start their turns (each calls done() when its turn has ended, thrown or not).
  void start(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = n;
  }
  void done() {
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
    release();
  }
  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      waiting_.push_back(from);
      release();
      cv_.wait(lock, [&] { return granted_ == from; });
      granted_ = -1;
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), from));
      delivered.push_back(from);
    }
    Bytes reply;
    try {
      reply = inner_.call(from, to, kind, request);
    } catch (...) {
      finish_call();
      throw;
    }
    finish_call();
    return reply;
  }
  std::vector<int> delivered;

 private:
  void finish_call() {
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
    release();
  }
  // With mu_ held: lets one waiting caller go once every running party waits and none is served.
  void release() {
    if (busy_ || granted_ >= 0 || waiting_.empty() || (int)waiting_.size() < running_) return;
    std::vector<int> ready = waiting_;
    std::sort(ready.begin(), ready.end());
    granted_ = ready[rng_.next_u64() % ready.size()];
    busy_ = true;
    cv_.notify_all();
  }
  InProcessTransport inner_;
  Rng rng_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> waiting_;
  int running_ = 0, granted_ = -1;
  bool busy_ = false;
};

// Every party's backbone weights and AdamW moments and its host's whole state, as bits.
struct SessionBits {
  std::vector<std::vector<uint32_t>> backbones;
  std::vector<HostState> hosts;
  explicit SessionBits(PcMoeSession& s) {
    for (int p = 0; p < s.n_parties(); ++p) {
      const CollabParty& party = s.party(p);
      const size_t n = party.backbone.numel();
      std::vector<uint32_t> b = HostState::bits(party.backbone.values(), n);
      for (const float* x : {party.optimizer.m(), party.optimizer.v()}) {
        const std::vector<uint32_t> more = HostState::bits(x, n);
        b.insert(b.end(), more.begin(), more.end());
      }
      backbones.push_back(std::move(b));
      hosts.emplace_back(party.host);
    }
  }
  // "" when equal, else what differs first.
  std::string difference(const SessionBits& o) const {
    for (size_t p = 0; p < backbones.size(); ++p) {
      if (backbones[p] != o.backbones[p]) return "party " + std::to_string(p) + "'s backbone or its AdamW state";
      if (const std::string d = first_difference(hosts[p], o.hosts[p]); !d.empty())
        return "party " + std::to_string(p) + "'s host: " + d;
    }
    return "";
  }
};

// A turn's numbers as bits, to compare runs exactly.
inline std::vector<uint64_t> result_bits(const TurnResult& r) {
  uint32_t f[3];
  std::memcpy(&f[0], &r.loss.total, 4);
  std::memcpy(&f[1], &r.loss.ce, 4);
  std::memcpy(&f[2], &r.lr, 4);
  uint64_t g;
  std::memcpy(&g, &r.grad_norm, 8);
  return {f[0], f[1], f[2], g};
}

}  // namespace pcmoe::test
