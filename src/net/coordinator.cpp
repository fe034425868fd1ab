#include "net/coordinator.h"

#include <chrono>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <thread>

#include "collab/schedule.h"

namespace pcmoe::net {

namespace {
constexpr uint32_t kPollMs = 1000;  // how long one long poll waits on the server
constexpr uint32_t kMaxPollMs = 5000;
}  // namespace

CoordinatorService::CoordinatorService(const DeployConfig& deploy, bool secure, SectionHashes sections, uint64_t seed,
                                       int64_t end_turn, Schedule schedule)
    : deploy_(deploy), secure_(secure), sections_(std::move(sections)), seed_(seed), n_((int)deploy.parties.size()),
      end_turn_(end_turn), schedule_(schedule), turn_(-1), last_seen_(n_) {
  using namespace std::placeholders;
  add<wire::JoinRequest, wire::JoinReply>(wire::kJoin, std::bind(&CoordinatorService::join, this, _1, _2, _3));
  add<wire::TurnRequest, wire::TurnReply>(wire::kNextTurn, std::bind(&CoordinatorService::next_turn, this, _1, _2, _3));
  add<wire::TurnDoneRequest, wire::Ack>(wire::kTurnDone, std::bind(&CoordinatorService::turn_done, this, _1, _2, _3));
  add<wire::BarrierRequest, wire::BarrierReply>(wire::kBarrier, std::bind(&CoordinatorService::barrier, this, _1, _2, _3));
  add<wire::StopRequest, wire::Ack>(wire::kStop, std::bind(&CoordinatorService::stop, this, _1, _2, _3));
  add<wire::HeartbeatRequest, wire::HeartbeatReply>(wire::kHeartbeat,
                                                    std::bind(&CoordinatorService::heartbeat, this, _1, _2, _3));
  watchdog_ = std::thread([this] { watch(); });
}

CoordinatorService::~CoordinatorService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  watchdog_.join();
}

grpc::Status CoordinatorService::admit(grpc::ServerContext* ctx, uint32_t party) {
  grpc::Status s = GrpcTransport::check_caller(ctx, deploy_, secure_, party);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  last_seen_[party] = std::chrono::steady_clock::now();
  return s;
}

void CoordinatorService::watch() {
  const auto silence = std::chrono::milliseconds((int64_t)(deploy_.dead_after_s * 1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!closing_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stopped_) continue;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& [p, turns] : joined_) {
      if (released_["finished"].count(p) || now - last_seen_[p] <= silence) continue;
      stopped_ = true;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f", std::chrono::duration<double>(now - last_seen_[p]).count());
      reason_ = deploy_.parties[p].name + " (" + deploy_.parties[p].address + ") has not been heard from for " + buf +
                " s (deploy.dead_after_s): presumed dead";
      std::fprintf(stderr, "coordinator: stopping the run: %s\n", reason_.c_str());
      cv_.notify_all();
      break;
    }
  }
}

grpc::Status CoordinatorService::heartbeat(grpc::ServerContext* ctx, const wire::HeartbeatRequest& req,
                                           wire::HeartbeatReply& reply) {
  if (grpc::Status s = admit(ctx, req.party); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  reply.poll = stopped_ ? wire::STOPPED : wire::READY;
  reply.reason = reason_;
  return grpc::Status::OK;
}

void CoordinatorService::agree_first_turn() {
  std::set<int64_t> common = joined_.begin()->second;
  for (const auto& [p, turns] : joined_) {
    std::set<int64_t> both;
    for (int64_t t : turns)
      if (common.count(t)) both.insert(t);
    common = both;
  }
  if (!common.empty() && *common.rbegin() < end_turn_) {
    turn_ = *common.rbegin();
    std::fprintf(stderr, "coordinator: every party joined; the run continues at turn %lld of %lld\n", (long long)turn_,
                 (long long)end_turn_);
    return;
  }
  stopped_ = true;
  if (!common.empty()) {
    reason_ = "nothing to train: every party's checkpoint is at turn " + std::to_string(*common.rbegin()) + " of " +
              std::to_string(end_turn_);
  } else {
    reason_ = "the parties share no checkpoint to start from (a fresh party among resumed ones, or checkpoints of "
              "different runs):";
    for (const auto& [p, turns] : joined_) {
      reason_ += " " + deploy_.parties[p].name + " at turn";
      for (int64_t t : turns) reason_ += " " + std::to_string(t);
      reason_ += ";";
    }
    reason_.pop_back();
  }
  std::fprintf(stderr, "coordinator: stopping the run: %s\n", reason_.c_str());
}

std::chrono::system_clock::time_point CoordinatorService::until(uint32_t wait_ms) const {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(std::min(wait_ms, kMaxPollMs));
}

grpc::Status CoordinatorService::join(grpc::ServerContext* ctx, const wire::JoinRequest& req, wire::JoinReply& reply) {
  const auto refuse = [](grpc::Status s) {
    std::fprintf(stderr, "coordinator: refused a join: %s\n", describe(s).c_str());
    return s;
  };
  if (grpc::Status s = GrpcTransport::check_caller(ctx, deploy_, secure_, req.party); !s.ok()) return refuse(s);
  const std::string& name = deploy_.parties[req.party].name;
  if (req.protocol_version != kProtocolVersion)
    return refuse({grpc::StatusCode::FAILED_PRECONDITION, name + " speaks protocol version " +
                                                              std::to_string(req.protocol_version) + ", the coordinator " +
                                                              std::to_string(kProtocolVersion)});
  if (const std::string diff = differing_sections(sections_, req.sections, "coordinator", name); !diff.empty())
    return refuse({grpc::StatusCode::FAILED_PRECONDITION,
                   name + "'s config differs from the coordinator's in " + diff +
                       ": every process must run the same config file and the same tokenizer file"});
  if ((int64_t)req.end_turn != end_turn_)
    return refuse({grpc::StatusCode::FAILED_PRECONDITION,
                   name + " would stop before turn " + std::to_string(req.end_turn) + ", the coordinator before turn " +
                       std::to_string(end_turn_) + ": start every party with the same --until"});
  std::unique_lock<std::mutex> lock(mu_);
  const bool complete_before = (int)joined_.size() == n_;
  joined_[req.party] = {(int64_t)req.first_turn, (int64_t)req.fallback_turn};
  last_seen_[req.party] = std::chrono::steady_clock::now();
  if (!complete_before && (int)joined_.size() == n_) agree_first_turn();
  cv_.notify_all();
  cv_.wait_until(lock, until(req.wait_ms), [&] { return stopped_ || (int)joined_.size() == n_; });
  reply.poll = stopped_ ? wire::STOPPED : (int)joined_.size() == n_ ? wire::READY : wire::WAIT;
  reply.reason = reason_;
  reply.first_turn = turn_ < 0 ? 0 : (uint64_t)turn_;
  if (reply.poll == wire::WAIT) {
    reply.reason = "waiting for";
    for (int p = 0; p < n_; ++p)
      if (!joined_.count((uint32_t)p)) reply.reason += " " + deploy_.parties[p].name;
  }
  if (stopped_) told(req.party);
  return grpc::Status::OK;
}

int64_t CoordinatorService::turn_for(uint32_t party) const {
  if (schedule_ == Schedule::kSequential) return turn_holder(seed_, n_, turn_) == (int)party ? turn_ : -1;
  // Concurrent: the party's turn of the round in progress, unless it is done with it.
  return round_done_.count(party) ? -1 : turn_ / n_ * n_ + (int64_t)party;
}

grpc::Status CoordinatorService::next_turn(grpc::ServerContext* ctx, const wire::TurnRequest& req, wire::TurnReply& reply) {
  if (grpc::Status s = admit(ctx, req.party); !s.ok()) return s;
  std::unique_lock<std::mutex> lock(mu_);
  if (turn_ < 0 && !stopped_) return {grpc::StatusCode::FAILED_PRECONDITION, "asked for a turn before every party joined"};
  const auto ready = [&] { return stopped_ || turn_ >= end_turn_ || turn_for(req.party) >= 0; };
  cv_.wait_until(lock, until(req.wait_ms), ready);
  if (stopped_) {
    reply.poll = wire::STOPPED;
    reply.reason = reason_;
    told(req.party);
  } else if (!ready()) {
    reply.poll = wire::WAIT;
  } else {
    reply.poll = wire::READY;
    reply.done = turn_ >= end_turn_;
    reply.turn = reply.done ? turn_ : turn_for(req.party);
    reply.round = reply.turn / n_;
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::turn_done(grpc::ServerContext* ctx, const wire::TurnDoneRequest& req, wire::Ack&) {
  if (grpc::Status s = admit(ctx, req.party); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  if (turn_ < 0 || turn_ >= end_turn_ || (int64_t)req.turn != turn_for(req.party))
    return {grpc::StatusCode::FAILED_PRECONDITION,
            deploy_.parties[req.party].name + " reports turn " + std::to_string(req.turn) + ", which it does not hold"};
  std::fprintf(stderr, "coordinator: turn %lld of %lld (round %lld, %s) done\n", (long long)req.turn,
               (long long)end_turn_, (long long)(turn_ / n_), deploy_.parties[req.party].name.c_str());
  ++turn_;
  if (schedule_ == Schedule::kConcurrent) {
    round_done_.insert(req.party);
    if (turn_ % n_ == 0) round_done_.clear();  // every party is done: the next round may start
  }
  cv_.notify_all();
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::barrier(grpc::ServerContext* ctx, const wire::BarrierRequest& req, wire::BarrierReply& reply) {
  if (grpc::Status s = admit(ctx, req.party); !s.ok()) return s;
  std::unique_lock<std::mutex> lock(mu_);
  std::set<uint32_t>& arrived = arrived_[req.name];
  arrived.insert(req.party);
  cv_.notify_all();
  cv_.wait_until(lock, until(req.wait_ms), [&] { return stopped_ || (int)arrived.size() == n_; });
  if (stopped_) {
    reply.poll = wire::STOPPED;
    reply.reason = reason_;
    told(req.party);
  } else if ((int)arrived.size() == n_) {
    reply.poll = wire::READY;
    released_[req.name].insert(req.party);
    cv_.notify_all();
  } else {
    reply.poll = wire::WAIT;
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::stop(grpc::ServerContext* ctx, const wire::StopRequest& req, wire::Ack&) {
  if (grpc::Status s = admit(ctx, req.party); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  if (!stopped_) {
    stopped_ = true;
    reason_ = deploy_.parties[req.party].name + " stopped the run: " + req.reason;
  }
  cv_.notify_all();
  return grpc::Status::OK;
}

void CoordinatorService::told(uint32_t party) {
  told_stop_.insert(party);
  cv_.notify_all();
}

void CoordinatorService::linger_until_told(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds((int64_t)(seconds * 1000)), [&] {
    for (uint32_t p = 1; p < (uint32_t)n_; ++p)
      if (!told_stop_.count(p)) return false;
    return true;
  });
}

bool CoordinatorService::wait_released(const std::string& name, double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds((int64_t)(seconds * 1000)),
                      [&] { return stopped_ || (int)released_[name].size() == n_; });
}

CoordinatorClient::CoordinatorClient(GrpcTransport& transport, int me)
    : t_(transport), me_(me), channel_(transport.channel(0)) {}

grpc::ClientContext& CoordinatorClient::context(grpc::ClientContext& ctx, double extra_s) const {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds((int64_t)((t_.deploy().call_timeout_s + extra_s) * 1000)));
  return ctx;
}

namespace {
[[noreturn]] void failed(const DeployConfig& d, const std::string& what, const grpc::Status& s) {
  throw std::runtime_error(what + " at the coordinator " + d.parties[0].name + " (" + d.parties[0].address +
                           ") failed: " + describe(s));
}
}  // namespace

int64_t CoordinatorClient::join(const SectionHashes& sections, int64_t newest_turn, int64_t fallback_turn,
                                int64_t end_turn) {
  const DeployConfig& d = t_.deploy();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds((int64_t)(d.join_timeout_s * 1000));
  wire::JoinRequest req;
  req.party = (uint32_t)me_;
  req.protocol_version = kProtocolVersion;
  req.sections = sections;
  req.first_turn = (uint64_t)newest_turn;
  req.fallback_turn = (uint64_t)fallback_turn;
  req.end_turn = (uint64_t)end_turn;
  req.wait_ms = kPollMs;
  grpc::Status last;
  std::string waiting;
  while (std::chrono::steady_clock::now() < give_up) {
    wire::JoinReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(2 * kPollMs));
    last = unary_call(*channel_, wire::kJoin, ctx, req, reply);
    if (last.ok()) {
      if (reply.poll == wire::READY) return (int64_t)reply.first_turn;
      waiting = reply.reason;
      if (reply.poll == wire::STOPPED) throw std::runtime_error("the run was stopped while joining: " + reply.reason);
      continue;
    }
    // UNAVAILABLE: the coordinator is not listening yet, or the TLS handshake failed (retried
    // until the timeout, which then names the last error).
    if (last.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED && last.error_code() != grpc::StatusCode::UNAVAILABLE)
      failed(d, "joining", last);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::string why = waiting;
  if (!last.ok()) {
    why = d.parties[me_].name + " cannot reach the coordinator " + d.parties[0].name + " at " + d.parties[0].address + ": " +
          describe(last);
    if (last.error_message().find("andshake") != std::string::npos)
      why += " (the TLS handshake failed: are both certificates from the same `pcmoe certs` CA?)";
    else if (!t_.secure())
      why += " (this party runs --insecure: a TLS coordinator closes plaintext connections)";
  }
  throw std::runtime_error("not every party joined within " + std::to_string((int)d.join_timeout_s) +
                           " s (deploy.join_timeout_s): " + why);
}

Turn CoordinatorClient::next_turn() {
  wire::TurnRequest req;
  req.party = (uint32_t)me_;
  req.wait_ms = kPollMs;
  for (;;) {
    wire::TurnReply reply;
    grpc::ClientContext ctx;
    const grpc::Status s = unary_call(*channel_, wire::kNextTurn, context(ctx, kPollMs / 1000.0), req, reply);
    if (!s.ok()) failed(t_.deploy(), "asking for a turn", s);
    if (reply.poll == wire::STOPPED) throw std::runtime_error(reply.reason);
    if (reply.poll == wire::READY) return {reply.done, reply.turn, reply.round};
  }
}

void CoordinatorClient::turn_done(uint64_t turn) {
  wire::TurnDoneRequest req;
  req.party = (uint32_t)me_;
  req.turn = turn;
  wire::Ack ack;
  grpc::ClientContext ctx;
  const grpc::Status s = unary_call(*channel_, wire::kTurnDone, context(ctx, 0), req, ack);
  if (!s.ok()) failed(t_.deploy(), "reporting turn " + std::to_string(turn), s);
}

void CoordinatorClient::barrier(const std::string& name) {
  wire::BarrierRequest req;
  req.party = (uint32_t)me_;
  req.name = name;
  req.wait_ms = kPollMs;
  for (;;) {
    wire::BarrierReply reply;
    grpc::ClientContext ctx;
    const grpc::Status s = unary_call(*channel_, wire::kBarrier, context(ctx, kPollMs / 1000.0), req, reply);
    if (!s.ok()) failed(t_.deploy(), "waiting at barrier '" + name + "'", s);
    if (reply.poll == wire::STOPPED) throw std::runtime_error(reply.reason);
    if (reply.poll == wire::READY) return;
  }
}

void CoordinatorClient::stop(const std::string& reason) {
  wire::StopRequest req;
  req.party = (uint32_t)me_;
  req.reason = reason;
  wire::Ack ack;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  unary_call(*channel_, wire::kStop, ctx, req, ack);
}


void CoordinatorClient::start_heartbeat() {
  const auto every = std::chrono::milliseconds((int64_t)(t_.deploy().dead_after_s * 200));
  hb_ = std::thread([this, every] {
    std::unique_lock<std::mutex> lock(hb_mu_);
    while (!hb_cv_.wait_for(lock, every, [this] { return hb_stop_; })) {
      wire::HeartbeatRequest req;
      req.party = (uint32_t)me_;
      wire::HeartbeatReply reply;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + every);
      unary_call(*channel_, wire::kHeartbeat, ctx, req, reply);  // a missed beat is the coordinator's to judge
    }
  });
}

void CoordinatorClient::stop_heartbeat() {
  {
    std::lock_guard<std::mutex> lock(hb_mu_);
    hb_stop_ = true;
  }
  hb_cv_.notify_all();
  if (hb_.joinable()) hb_.join();
}

CoordinatorClient::~CoordinatorClient() { stop_heartbeat(); }

}  // namespace pcmoe::net
