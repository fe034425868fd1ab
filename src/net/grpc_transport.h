// pcmoe::Transport over gRPC (service Party of proto/pcmoe.proto): a party's process serves its
// own handler (its ExpertHost) and calls the other parties' servers. Mutual TLS unless built
// insecure (loopback only); deadlines on every call; every message bounded; a payload above
// deploy.chunk_bytes (and every weight fetch, whose reply is one expert's weights) goes as a
// stream of chunks (Party.CallStream), its reply likewise; bytes
// counted in TrafficStats exactly as InProcessTransport counts them (payloads, each direction),
// on the caller's side and on the host's side. A tap sees the requests this party serves and the
// responses to its own calls: what the protocol hands it.
#pragma once
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "collab/transport.h"
#include "net/certs.h"
#include "net/deploy.h"
#include "net/wire.h"

namespace pcmoe::net {

// Puts a streamed payload back together: chunks numbered 0, 1, 2, ... each exactly once, every
// one with the first one's kind, caller, step and total, none empty (unless the payload is),
// never past the announced total, which may not exceed `max_total`. Nothing is handed on until
// finish() found the stream complete, so a truncated, reordered or duplicated stream reaches no
// handler.
class ChunkAssembly {
 public:
  explicit ChunkAssembly(size_t max_total) : max_total_(max_total) {}
  // OK, or why the chunk cannot follow (INVALID_ARGUMENT; RESOURCE_EXHAUSTED for a total above
  // max_total, before any of it is stored).
  grpc::Status add(wire::CallChunk&& chunk);
  // OK when every announced byte arrived.
  grpc::Status finish() const;
  const wire::CallChunk& head() const { return head_; }  // kind, from, step, total of the stream
  std::string& payload() { return payload_; }

 private:
  size_t max_total_;
  uint32_t next_ = 0;
  wire::CallChunk head_;
  std::string payload_;
};

class GrpcTransport final : public Transport {
 public:
  // tls empty: plaintext, refused unless every party address is a loopback address.
  GrpcTransport(const DeployConfig& deploy, int me, std::optional<TlsFiles> tls);
  ~GrpcTransport() override;

  // Only this party's own handler; calls to it from other parties are served one at a time
  // (concurrently: as they come, at once, the handler being thread-safe: a concurrent round's
  // host). May come after start(): until then calls are answered UNAVAILABLE.
  void serve(int party, Handler handler) override;
  void serve_concurrently(int party, Handler handler);
  // Listens on this party's address with the Party service and `extra` (the coordinator on
  // party 0); throws if the address cannot be bound.
  void start(grpc::Service* extra = nullptr);
  void shutdown();

  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override;
  // The global turn index outgoing calls carry (CallRequest.step): a label for counting, which
  // orders nothing (the host checks the turn of each call itself: ExpertHost).
  void set_step(uint64_t step) { step_ = step; }
  uint64_t step() const { return step_; }
  // Incoming calls of turn `end` or later (the evaluation after training) are served but not
  // counted: others may start evaluating before this party has read its training traffic.
  void count_turns_below(uint64_t end) { count_below_ = end; }

  // A channel to party `peer`, authenticated as this party, checking the peer's name.
  std::shared_ptr<grpc::Channel> channel(int peer);
  const DeployConfig& deploy() const { return deploy_; }
  int me() const { return me_; }
  bool secure() const { return tls_.has_value(); }
  // A copy of the counts, safe while the server runs.
  TrafficStats traffic() const;

  // Checks a server-side caller: with TLS the CN of its certificate must be the name of
  // `claimed`, a party index of the deployment. Used by Party and Coordinator alike.
  static grpc::Status check_caller(grpc::ServerContext* ctx, const DeployConfig& deploy, bool secure, uint32_t claimed);

 private:
  // Runs the handler (serialised unless concurrent_); throws what it throws.
  Bytes run_handler(MsgKind kind, int from, const Bytes& request, bool* served);
  grpc::Status handle(grpc::ServerContext* ctx, uint32_t kind, uint32_t from, uint64_t step, const std::string& payload,
                      std::string* reply);
  grpc::Status handle_stream(grpc::ServerContext* ctx, grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* s);
  std::string call_stream(int to, MsgKind kind, const Bytes& request);
  std::string call_failed(MsgKind kind, int to, const grpc::Status& s) const;
  void count(MsgKind kind, int from, int to, size_t bytes);

  DeployConfig deploy_;
  int me_;
  std::optional<TlsFiles> tls_;
  Handler handler_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::mutex channels_mu_;
  mutable std::mutex stats_mu_;
  std::mutex host_mu_;  // one incoming call at a time reaches the handler (unless concurrent_)
  bool concurrent_ = false;
  uint64_t step_ = 0;
  uint64_t count_below_ = UINT64_MAX;
};

// "what failed: CODE: message" for a failed gRPC status.
std::string describe(const grpc::Status& s);

}  // namespace pcmoe::net
