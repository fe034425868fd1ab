// The Coordinator service of proto/pcmoe.proto (run by party 0) and its client: join with the
// protocol version and section hashes, turns in the schedule's order (turn_holder: one at a time,
// or concurrent rounds: every party's turn of a round at once, the next round once all are done),
// barriers, stop.
#pragma once
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "collab/schedule.h"
#include "net/deploy.h"
#include "net/grpc_transport.h"
#include "net/rpc.h"

namespace pcmoe::net {

class CoordinatorService final : public UnaryService {
 public:
  // Hands out turns first .. end_turn - 1, where first is the latest checkpoint turn every
  // party offers when it joins.
  CoordinatorService(const DeployConfig& deploy, bool secure, SectionHashes sections, uint64_t seed, int64_t end_turn,
                     Schedule schedule = Schedule::kSequential);
  ~CoordinatorService() override;

  // Waits (at most `seconds`) until every party has been told that barrier `name` is passed,
  // so that the coordinator's server can go down without cutting anyone's answer off.
  bool wait_released(const std::string& name, double seconds);
  // After a stop: waits (at most `seconds`) until every other party has been answered STOPPED.
  void linger_until_told(double seconds);

 private:
  grpc::Status join(grpc::ServerContext* ctx, const wire::JoinRequest& req, wire::JoinReply& reply);
  grpc::Status next_turn(grpc::ServerContext* ctx, const wire::TurnRequest& req, wire::TurnReply& reply);
  grpc::Status turn_done(grpc::ServerContext* ctx, const wire::TurnDoneRequest& req, wire::Ack& reply);
  grpc::Status barrier(grpc::ServerContext* ctx, const wire::BarrierRequest& req, wire::BarrierReply& reply);
  grpc::Status stop(grpc::ServerContext* ctx, const wire::StopRequest& req, wire::Ack& reply);
  grpc::Status heartbeat(grpc::ServerContext* ctx, const wire::HeartbeatRequest& req, wire::HeartbeatReply& reply);
  // Checks the caller and, with mu_ held, notes that it is alive.
  grpc::Status admit(grpc::ServerContext* ctx, uint32_t party);
  void watch();  // the watchdog thread: stops the run when a joined party falls silent
  void told(uint32_t party);  // with mu_ held: `party` has been answered STOPPED
  void agree_first_turn();    // with mu_ held, once all have joined: sets turn_ or stops the run
  std::chrono::system_clock::time_point until(uint32_t wait_ms) const;
  // With mu_ held: the turn `party` may train now, or -1 (it holds none until others are done).
  int64_t turn_for(uint32_t party) const;

  DeployConfig deploy_;
  bool secure_;
  SectionHashes sections_;
  uint64_t seed_;
  int n_;
  int64_t end_turn_;
  Schedule schedule_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint32_t, std::set<int64_t>> joined_;  // party -> the checkpoint turns it can start at
  int64_t turn_;  // turns done (sequential: the turn now due)
  std::set<uint32_t> round_done_;  // concurrent: the parties done with the round of turn_
  bool stopped_ = false;
  std::string reason_;
  std::map<std::string, std::set<uint32_t>> arrived_, released_;
  std::set<uint32_t> told_stop_;
  std::vector<std::chrono::steady_clock::time_point> last_seen_;
  bool closing_ = false;
  std::thread watchdog_;
};

// A turn handed out: its global index and round, or done.
struct Turn {
  bool done = false;
  uint64_t turn = 0, round = 0;
};

// Party `me`'s side of the coordination. Every call has a deadline; long polls are repeated
// until their answer comes. A STOPPED answer or a failed call throws with the reason.
class CoordinatorClient {
 public:
  CoordinatorClient(GrpcTransport& transport, int me);
  // Offers the checkpoint turns this party can start at (its newest and the one before; both 0
  // on a fresh start) and returns the one every party continues from. Throws if not everyone
  // joined within join_timeout_s, or if the parties share no checkpoint.
  int64_t join(const SectionHashes& sections, int64_t newest_turn, int64_t fallback_turn, int64_t end_turn);
  Turn next_turn();
  void turn_done(uint64_t turn);
  void barrier(const std::string& name);
  void stop(const std::string& reason);  // best effort: the coordinator may be gone
  // Sends a heartbeat every dead_after_s / 5 from a thread of its own until the client is
  // destroyed or stop_heartbeat() is called.
  void start_heartbeat();
  void stop_heartbeat();
  ~CoordinatorClient();

 private:
  grpc::ClientContext& context(grpc::ClientContext& ctx, double extra_s) const;
  GrpcTransport& t_;
  int me_;
  std::shared_ptr<grpc::Channel> channel_;
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
  bool hb_stop_ = false;
  std::thread hb_;
};

}  // namespace pcmoe::net
