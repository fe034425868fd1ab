#include "net/grpc_transport.h"

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "net/rpc.h"

namespace pcmoe::net {

namespace {
const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    default: return "ERROR";
  }
}

std::chrono::system_clock::time_point deadline_after(double seconds) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds((int64_t)(seconds * 1000));
}
}  // namespace

std::string describe(const grpc::Status& s) { return std::string(code_name(s.error_code())) + ": " + s.error_message(); }

grpc::Status ChunkAssembly::add(wire::CallChunk&& c) {
  const auto invalid = [](const std::string& why) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, why); };
  if (next_ == 0) {
    if (c.seq != 0) return invalid("stream starts with chunk " + std::to_string(c.seq) + ", not 0");
    if (c.total_bytes > max_total_)
      return {grpc::StatusCode::RESOURCE_EXHAUSTED, "stream announces " + std::to_string(c.total_bytes) +
                                                        " bytes; the largest call of this deployment is " +
                                                        std::to_string(max_total_)};
    head_ = c;
    head_.data.clear();
    payload_.reserve(c.total_bytes);
  } else if (c.seq != next_) {
    return invalid("chunk " + std::to_string(c.seq) + " where chunk " + std::to_string(next_) +
                   " was due (reordered, duplicated or lost)");
  } else if (c.kind != head_.kind || c.from != head_.from || c.step != head_.step || c.total_bytes != head_.total_bytes) {
    return invalid("chunk " + std::to_string(c.seq) + " changes the call's kind, caller, step or total");
  }
  if (c.data.empty() && c.total_bytes > 0) return invalid("chunk " + std::to_string(c.seq) + " is empty");
  if (c.data.size() > c.total_bytes - payload_.size())
    return invalid("chunk " + std::to_string(c.seq) + " runs past the announced " + std::to_string(c.total_bytes) +
                   " bytes");
  payload_ += c.data;
  ++next_;
  return grpc::Status::OK;
}

grpc::Status ChunkAssembly::finish() const {
  if (next_ == 0) return {grpc::StatusCode::INVALID_ARGUMENT, "stream without chunks"};
  if (payload_.size() != head_.total_bytes)
    return {grpc::StatusCode::INVALID_ARGUMENT, "truncated stream: " + std::to_string(payload_.size()) + " of " +
                                                    std::to_string(head_.total_bytes) + " bytes in " +
                                                    std::to_string(next_) + " chunks"};
  return grpc::Status::OK;
}

namespace {
// Sends `payload` as chunks of at most `chunk` bytes (one empty chunk for an empty payload);
// false when the peer ended the stream first.
template <class Stream>
bool write_chunks(Stream& s, wire::CallChunk head, const std::string& payload, size_t chunk) {
  head.total_bytes = payload.size();
  size_t at = 0;
  do {
    head.data = payload.substr(at, chunk);
    at += head.data.size();
    if (!s.Write(to_buffer(wire::encode(head)))) return false;
    ++head.seq;
  } while (at < payload.size());
  return true;
}
}  // namespace

GrpcTransport::GrpcTransport(const DeployConfig& deploy, int me, std::optional<TlsFiles> tls)
    : deploy_(deploy), me_(me), tls_(std::move(tls)), channels_(deploy.parties.size()) {
  if (me < 0 || me >= (int)deploy.parties.size())
    throw std::runtime_error("party " + std::to_string(me) + " is not in the deployment's " +
                             std::to_string(deploy.parties.size()) + " parties");
  if (!tls_)
    for (const PartyAddress& p : deploy.parties)
      if (!is_loopback_host(address_host(p.address)))
        throw std::runtime_error("--insecure is allowed only when every party is on a loopback address; " + p.name +
                                 " is at " + p.address);
}

GrpcTransport::~GrpcTransport() { shutdown(); }

void GrpcTransport::serve(int party, Handler handler) {
  if (party != me_) throw std::logic_error("a gRPC transport serves only its own party " + std::to_string(me_));
  std::lock_guard<std::mutex> lock(host_mu_);
  handler_ = std::move(handler);
}

void GrpcTransport::serve_concurrently(int party, Handler handler) {
  if (party != me_) throw std::logic_error("a gRPC transport serves only its own party " + std::to_string(me_));
  std::lock_guard<std::mutex> lock(host_mu_);
  concurrent_ = true;
  handler_ = std::move(handler);
}

Bytes GrpcTransport::run_handler(MsgKind kind, int from, const Bytes& request, bool* served) {
  std::unique_lock<std::mutex> lock(host_mu_);
  *served = (bool)handler_;
  if (!handler_) return {};
  if (!concurrent_) return handler_(kind, from, request);
  const Handler h = handler_;  // set once before the calls come: a copy outlives a later serve()
  lock.unlock();
  return h(kind, from, request);
}

void GrpcTransport::start(grpc::Service* extra) {
  auto party = std::make_unique<UnaryService>();
  party->add<wire::CallRequest, wire::CallReply>(
      wire::kPartyCall, [this](grpc::ServerContext* ctx, const wire::CallRequest& req, wire::CallReply& reply) {
        return handle(ctx, req.kind, req.from, req.step, req.payload, &reply.payload);
      });
  party->add_bidi(wire::kPartyCallStream, [this](grpc::ServerContext* ctx, UnaryService::Stream* stream) {
    return handle_stream(ctx, stream);
  });
  service_ = std::move(party);
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (tls_) {
    grpc::SslServerCredentialsOptions opts(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    opts.pem_root_certs = tls_->ca;
    opts.pem_key_cert_pairs.push_back({tls_->key, tls_->cert});
    creds = grpc::SslServerCredentials(opts);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(deploy_.parties[me_].address, creds, &port);
  b.SetMaxReceiveMessageSize((int)deploy_.max_message_bytes);
  b.SetMaxSendMessageSize((int)deploy_.max_message_bytes);
  b.RegisterService(service_.get());
  if (extra) b.RegisterService(extra);
  server_ = b.BuildAndStart();
  if (!server_ || port == 0)
    throw std::runtime_error(deploy_.parties[me_].name + " cannot listen on " + deploy_.parties[me_].address +
                             " (address in use or not local?)");
}

void GrpcTransport::shutdown() {
  if (server_) {
    server_->Shutdown(deadline_after(2));
    server_->Wait();
    server_.reset();
  }
}

std::shared_ptr<grpc::Channel> GrpcTransport::channel(int peer) {
  std::lock_guard<std::mutex> lock(channels_mu_);
  if (!channels_[peer]) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize((int)deploy_.max_message_bytes);
    args.SetMaxSendMessageSize((int)deploy_.max_message_bytes);
    // Parties start in any order, so the first connections are often refused; gRPC's default
    // reconnect backoff (1 s, growing 1.6x) would then hold a join back for seconds. (Not
    // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC takes it as the time a connection attempt is
    // given, which must stay long enough for a distant or busy peer's TLS handshake.)
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (tls_) {
      grpc::SslCredentialsOptions opts;
      opts.pem_root_certs = tls_->ca;
      opts.pem_private_key = tls_->key;
      opts.pem_cert_chain = tls_->cert;
      creds = grpc::SslCredentials(opts);
      args.SetSslTargetNameOverride(deploy_.parties[peer].name);  // the peer must prove this name
    } else {
      creds = grpc::InsecureChannelCredentials();
    }
    channels_[peer] = grpc::CreateCustomChannel(deploy_.parties[peer].address, creds, args);
  }
  return channels_[peer];
}

void GrpcTransport::count(MsgKind kind, int from, int to, size_t bytes) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.add(kind, from, to, bytes);
}

TrafficStats GrpcTransport::traffic() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

Bytes GrpcTransport::call(int from, int to, MsgKind kind, const Bytes& request) {
  if (from != me_) throw std::logic_error("party " + std::to_string(me_) + " cannot call as party " + std::to_string(from));
  if (to < 0 || to >= (int)deploy_.parties.size()) throw std::runtime_error("no party " + std::to_string(to));
  if (to == me_) {
    bool served = false;
    Bytes reply = run_handler(kind, from, request, &served);  // not a boundary: neither sent nor counted
    if (!served) throw std::logic_error("party " + std::to_string(me_) + " calls its own host before serving it");
    return reply;
  }
  count(kind, from, to, request.size());
  if (tap_) tap_(kind, from, to, false, request);
  std::string p;
  // A weight fetch's reply (one expert's weights) dwarfs its 8-byte request: it always streams,
  // so the reply comes back in chunks too.
  if (request.size() > deploy_.chunk_bytes || kind == MsgKind::kExpertWeights) {
    p = call_stream(to, kind, request);
  } else {
    wire::CallRequest req;
    req.kind = static_cast<uint32_t>(kind);
    req.from = (uint32_t)from;
    req.step = step_;
    req.payload.assign(reinterpret_cast<const char*>(request.data()), request.size());
    wire::CallReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline_after(deploy_.call_timeout_s));
    const grpc::Status s = unary_call(*channel(to), wire::kPartyCall, ctx, req, reply);
    if (!s.ok()) throw std::runtime_error(call_failed(kind, to, s));
    p = std::move(reply.payload);
  }
  Bytes response(p.size());
  if (!p.empty()) std::memcpy(response.data(), p.data(), p.size());
  count(kind, to, from, response.size());
  if (tap_) tap_(kind, to, from, true, response);
  return response;
}

std::string GrpcTransport::call_failed(MsgKind kind, int to, const grpc::Status& s) const {
  return std::string(to_string(kind)) + " call from " + deploy_.parties[me_].name + " to " + deploy_.parties[to].name +
         " at " + deploy_.parties[to].address + " failed: " + describe(s);
}

std::string GrpcTransport::call_stream(int to, MsgKind kind, const Bytes& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_after(deploy_.call_timeout_s));
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel(to).get(), grpc::internal::RpcMethod(wire::kPartyCallStream, grpc::internal::RpcMethod::BIDI_STREAMING),
          &ctx));
  wire::CallChunk head;
  head.kind = static_cast<uint32_t>(kind);
  head.from = (uint32_t)me_;
  head.step = step_;
  // A host that refuses the call ends the stream early; Finish() below says why.
  if (write_chunks(*stream, head, std::string(reinterpret_cast<const char*>(request.data()), request.size()),
                   deploy_.chunk_bytes))
    stream->WritesDone();
  ChunkAssembly reply(deploy_.max_payload_bytes);
  grpc::Status bad_reply;
  grpc::ByteBuffer buf;
  while (stream->Read(&buf)) {
    if (!bad_reply.ok()) continue;  // drain, so that Finish() returns
    wire::CallChunk c;
    try {
      wire::decode(from_buffer(buf), c);
      bad_reply = reply.add(std::move(c));
    } catch (const std::exception& e) {
      bad_reply = {grpc::StatusCode::INTERNAL, e.what()};
    }
  }
  const grpc::Status s = stream->Finish();
  if (!s.ok()) throw std::runtime_error(call_failed(kind, to, s));
  if (bad_reply.ok()) bad_reply = reply.finish();
  if (!bad_reply.ok())
    throw std::runtime_error(call_failed(kind, to, {bad_reply.error_code(), "reply stream: " + bad_reply.error_message()}));
  return std::move(reply.payload());
}

grpc::Status GrpcTransport::check_caller(grpc::ServerContext* ctx, const DeployConfig& deploy, bool secure,
                                         uint32_t claimed) {
  if (claimed >= deploy.parties.size())
    return {grpc::StatusCode::INVALID_ARGUMENT, "caller claims party " + std::to_string(claimed) + ", which does not exist"};
  if (!secure) return grpc::Status::OK;
  const std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
  const std::vector<grpc::string_ref> cns = auth ? auth->FindPropertyValues("x509_common_name") : std::vector<grpc::string_ref>{};
  const std::string expected = deploy.parties[claimed].name;
  if (cns.size() != 1 || std::string(cns[0].data(), cns[0].size()) != expected)
    return {grpc::StatusCode::PERMISSION_DENIED,
            "caller claims to be " + expected + " but its certificate's CN is '" +
                (cns.empty() ? std::string("(none)") : std::string(cns[0].data(), cns[0].size())) + "'"};
  return grpc::Status::OK;
}

grpc::Status GrpcTransport::handle(grpc::ServerContext* ctx, uint32_t kind, uint32_t from, uint64_t step,
                                   const std::string& payload, std::string* reply) {
  if (grpc::Status s = check_caller(ctx, deploy_, secure(), from); !s.ok()) return s;
  if ((int)from == me_) return {grpc::StatusCode::INVALID_ARGUMENT, "a party does not call itself over the network"};
  if (!wire::known_kind(kind)) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown message kind " + std::to_string(kind)};
  const auto k = static_cast<MsgKind>(kind);
  const Bytes request(reinterpret_cast<const std::byte*>(payload.data()),
                      reinterpret_cast<const std::byte*>(payload.data()) + payload.size());
  {
    std::lock_guard<std::mutex> lock(host_mu_);  // a handler, once set, stays
    if (!handler_) return {grpc::StatusCode::UNAVAILABLE, deploy_.parties[me_].name + " serves no host yet"};
  }
  if (tap_) tap_(k, (int)from, me_, false, request);
  Bytes response;
  bool served = false;
  try {
    response = run_handler(k, (int)from, request, &served);
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, deploy_.parties[me_].name + " rejected a " + to_string(k) + " call from " +
                                                    deploy_.parties[from].name + ": " + e.what()};
  }
  if (step < count_below_) {
    count(k, (int)from, me_, request.size());
    count(k, me_, (int)from, response.size());
  }
  reply->assign(reinterpret_cast<const char*>(response.data()), response.size());
  return grpc::Status::OK;
}

grpc::Status GrpcTransport::handle_stream(grpc::ServerContext* ctx,
                                          grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  ChunkAssembly in(deploy_.max_payload_bytes);
  grpc::ByteBuffer buf;
  while (stream->Read(&buf)) {
    wire::CallChunk c;
    try {
      wire::decode(from_buffer(buf), c);
    } catch (const std::exception& e) {
      return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
    }
    // Who calls is checked on the first chunk, before anything is stored for it.
    if (c.seq == 0)
      if (grpc::Status s = check_caller(ctx, deploy_, secure(), c.from); !s.ok()) return s;
    if (grpc::Status s = in.add(std::move(c)); !s.ok()) return s;
  }
  if (grpc::Status s = in.finish(); !s.ok()) return s;
  std::string reply;
  const wire::CallChunk& h = in.head();
  if (grpc::Status s = handle(ctx, h.kind, h.from, h.step, in.payload(), &reply); !s.ok()) return s;
  if (!write_chunks(*stream, wire::CallChunk{}, reply, deploy_.chunk_bytes))
    return {grpc::StatusCode::CANCELLED, "the caller left before the reply was sent"};
  return grpc::Status::OK;
}

}  // namespace pcmoe::net
