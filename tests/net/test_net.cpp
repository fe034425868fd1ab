// The network layer: the wire codec against protoc's reading of proto/pcmoe.proto, and an
// expert host served over gRPC with mutual TLS refusing truncated, overlong, oversized,
// malformed and impersonating calls with an error and no change of its state.
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "collab/expert_host.h"
#include "net/certs.h"
#include "net/grpc_transport.h"
#include "net/rpc.h"
#include "net/wire.h"
#include "../unit/hosts.h"
#include "free_port.h"

namespace fs = std::filesystem;
using namespace pcmoe;
using namespace pcmoe::net;

namespace {

std::string shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << cmd;
  return out;
}

std::string protoc(const std::string& mode, const std::string& message, const std::string& input) {
  const fs::path in = fs::temp_directory_path() / ("pcmoe-protoc-" + std::to_string(getpid()));
  std::ofstream(in, std::ios::binary) << input;
  const std::string out = shell(std::string(PCMOE_PROTOC) + " --proto_path=" + PCMOE_SOURCE_DIR + "/proto --" + mode +
                                "=pcmoe.wire." + message + " pcmoe.proto < " + in.string());
  fs::remove(in);
  return out;
}

TEST(Wire, ProtocReadsWhatWeWrite) {
  wire::CallRequest req;
  req.kind = wire::EXPERT_BACKWARD;
  req.from = 2;
  req.step = 300;
  req.payload = std::string("a\0b", 3);
  const std::string text = protoc("decode", "CallRequest", wire::encode(req));
  EXPECT_NE(text.find("kind: EXPERT_BACKWARD"), std::string::npos) << text;
  EXPECT_NE(text.find("from: 2"), std::string::npos) << text;
  EXPECT_NE(text.find("step: 300"), std::string::npos) << text;
  EXPECT_NE(text.find("payload: \"a\\000b\""), std::string::npos) << text;
  wire::TurnDoneRequest done;
  done.party = 3;
  done.turn = 1ull << 40;
  const std::string t2 = protoc("decode", "TurnDoneRequest", wire::encode(done));
  EXPECT_EQ(t2, "party: 3\nturn: 1099511627776\n");
  wire::JoinRequest join;
  join.party = 1;
  join.sections = {{"data", "d4"}, {"model", "m0"}};
  const std::string t4 = protoc("decode", "JoinRequest", wire::encode(join));
  EXPECT_EQ(t4, "party: 1\nsections {\n  key: \"data\"\n  value: \"d4\"\n}\nsections {\n  key: \"model\"\n  value: \"m0\"\n}\n");
  wire::CallChunk chunk;
  chunk.kind = wire::EXPERT_FORWARD;
  chunk.from = 1;
  chunk.step = 9;
  chunk.total_bytes = 5000000000ull;
  chunk.seq = 3;
  chunk.data = "xyz";
  const std::string t3 = protoc("decode", "CallChunk", wire::encode(chunk));
  for (const char* f : {"kind: EXPERT_FORWARD", "from: 1", "step: 9", "total_bytes: 5000000000", "seq: 3", "data: \"xyz\""})
    EXPECT_NE(t3.find(f), std::string::npos) << f << " in " << t3;
}

TEST(Wire, WeReadWhatProtocWrites) {
  wire::TurnReply r;
  wire::decode(protoc("encode", "TurnReply", "poll: STOPPED done: true turn: 77 round: 19 reason: \"party2 died\""), r);
  EXPECT_EQ(r.poll, wire::STOPPED);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.turn, 77u);
  EXPECT_EQ(r.round, 19u);
  EXPECT_EQ(r.reason, "party2 died");
  wire::JoinRequest j;
  wire::decode(protoc("encode", "JoinRequest",
                      "party: 1 protocol_version: 5 wait_ms: 1000 first_turn: 12 end_turn: 40 fallback_turn: 8 "
                      "sections { key: \"train\" value: \"abc\" } sections { key: \"data\" value: \"\" }"),
               j);
  EXPECT_EQ(j.party, 1u);
  EXPECT_EQ(j.protocol_version, 5u);
  EXPECT_EQ(j.sections, (std::map<std::string, std::string>{{"data", ""}, {"train", "abc"}}));
  EXPECT_EQ(j.wait_ms, 1000u);
  EXPECT_EQ(j.first_turn, 12u);
  EXPECT_EQ(j.end_turn, 40u);
  EXPECT_EQ(j.fallback_turn, 8u);
  wire::JoinReply jr;
  wire::decode(protoc("encode", "JoinReply", "poll: READY first_turn: 8"), jr);
  EXPECT_EQ(jr.poll, wire::READY);
  EXPECT_EQ(jr.first_turn, 8u);
}

TEST(Wire, MalformedMessagesAreRejected) {
  wire::CallRequest m;
  auto rejects = [&](const std::string& bytes, const std::string& needle) {
    try {
      wire::decode(bytes, m);
      ADD_FAILURE() << "accepted a malformed message; expected: " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("malformed CallRequest"), std::string::npos) << e.what();
    }
  };
  rejects(std::string("\x08\xff", 2), "truncated varint");
  rejects(std::string("\x22\x05" "ab", 4), "runs past the message end");
  rejects(std::string("\x09" "12345678", 9), "wire type 1, expected 0");
  rejects(std::string("\x10\x80\x80\x80\x80\x10", 6), "out of range");  // from = 2^32
  rejects(std::string("\x00\x01", 2), "invalid field number");
  wire::decode(std::string("\x50\x07\x10\x03", 4), m);  // an unknown field 10 is skipped
  EXPECT_EQ(m.from, 3u);
  // A section-hash entry whose key is not a string, or that runs past its entry.
  wire::JoinRequest j;
  for (const auto& [bytes, needle] : {std::pair{std::string("\x42\x02\x08\x01", 4), "malformed map entry: field 1 has wire type 0"},
                                      std::pair{std::string("\x42\x03\x0a\x05" "a", 5), "malformed map entry: field of 5 bytes"}}) {
    try {
      wire::decode(bytes, j);
      ADD_FAILURE() << "accepted a malformed map entry; expected: " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("malformed JoinRequest: ") + needle), std::string::npos) << e.what();
    }
  }
}

Bytes to_bytes(const std::string& s) {
  return Bytes(reinterpret_cast<const std::byte*>(s.data()), reinterpret_cast<const std::byte*>(s.data()) + s.size());
}
std::string to_string(const Bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

// Party 1 of 3 serves its expert host over mutual TLS; party 0 calls it.
class HostOverGrpc : public ::testing::Test {
 protected:
  void SetUp() override {
    m_.vocab_size = 64;
    m_.d_model = 16;
    m_.n_layers = 2;
    m_.n_heads = 2;
    m_.n_kv_heads = 1;
    m_.d_ff = 12;
    m_.d_ff_dense = 20;
    m_.n_experts = 3;
    m_.top_k = 2;
    m_.moe_every = 1;
    m_.seq_len = 8;
    t_.batch_size = 2;
    t_.threads = 1;
    for (int i = 0; i < 3; ++i) d_.parties.push_back({"party" + std::to_string(i), "127.0.0.1:" + std::to_string(free_port())});
    d_.call_timeout_s = 10;
    // Small chunks: the host's largest call (32 rows, 2,060 bytes) exceeds the message bound and
    // must be streamed; anything above max_payload_bytes is refused outright.
    d_.chunk_bytes = 1024;
    d_.max_message_bytes = 2048;
    d_.max_payload_bytes = 16 * 1024;
    dir_ = (fs::temp_directory_path() / ("pcmoe-net-test-" + std::to_string(getpid()))).string();
    make_certs(d_, dir_);
    host_ = std::make_unique<ExpertHost>(m_, t_, 1, 3, t_.batch_size * m_.seq_len * m_.top_k);
    host_->start_at(first_turn_);
    server_ = std::make_unique<GrpcTransport>(d_, 1, read_tls_files(dir_, "party1"));
    server_->serve(1, [this](MsgKind k, int from, const Bytes& req) { return host_->handle(k, from, req); });
    server_->start();
    client_ = std::make_unique<GrpcTransport>(d_, 0, read_tls_files(dir_, "party0"));
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    fs::remove_all(dir_);
  }

  Bytes expert_call(uint32_t layer, uint32_t rows, size_t floats, size_t extra_bytes = 0) {
    Writer w;
    w.u32(layer);
    w.u32(1);  // party 1 of 3 hosts expert 1 alone
    w.u32(rows);
    std::vector<float> x(floats);
    for (size_t i = 0; i < floats; ++i) x[i] = 0.01f * float(i % 97) - 0.3f;
    w.floats(x.data(), floats);
    Bytes b = w.take();
    b.resize(b.size() + extra_bytes);
    return b;
  }

  // A "begin turn" call to party 1 over a channel of its own, with the client's TLS `opts`.
  grpc::Status begin_turn_as(const grpc::SslCredentialsOptions& opts) {
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("party1");
    auto channel = grpc::CreateCustomChannel(d_.parties[1].address, grpc::SslCredentials(opts), args);
    wire::CallRequest req;
    req.kind = wire::CONTROL;
    req.payload = to_string(test::begin_message(first_turn_));
    wire::CallReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return unary_call(*channel, wire::kPartyCall, ctx, req, reply);
  }

  // "" when the host's whole state is `before`'s, bit for bit.
  std::string changed_since(const test::HostState& before) const {
    return test::first_difference(before, test::HostState(*host_));
  }

  void expect_refused(MsgKind kind, const Bytes& payload, const std::string& needle, GrpcTransport* caller = nullptr) {
    GrpcTransport& c = caller ? *caller : *client_;
    try {
      c.call(c.me(), 1, kind, payload);
      ADD_FAILURE() << "the host accepted a bad call; expected: " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }

  grpc::Status raw(const wire::CallRequest& req) {
    wire::CallReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return unary_call(*client_->channel(1), wire::kPartyCall, ctx, req, reply);
  }

  // A chunk stream written by hand: each (seq, data, step) as given, then the end of the stream.
  grpc::Status raw_stream(uint32_t kind, uint32_t from, uint64_t total, const std::vector<std::tuple<uint32_t, std::string, uint64_t>>& chunks,
                          std::string* reply = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> s(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
            client_->channel(1).get(),
            grpc::internal::RpcMethod(wire::kPartyCallStream, grpc::internal::RpcMethod::BIDI_STREAMING), &ctx));
    for (const auto& [seq, data, step] : chunks) {
      wire::CallChunk c;
      c.kind = kind;
      c.from = from;
      c.step = step;
      c.total_bytes = total;
      c.seq = seq;
      c.data = data;
      if (!s->Write(to_buffer(wire::encode(c)))) break;
    }
    s->WritesDone();
    grpc::ByteBuffer b;
    while (s->Read(&b)) {
      wire::CallChunk c;
      wire::decode(from_buffer(b), c);
      if (reply) *reply += c.data;
    }
    return s->Finish();
  }

  ModelConfig m_;
  TrainConfig t_;
  const uint64_t first_turn_ = (uint64_t)next_turn_of(t_.seed, 3, 0, 0, 3);  // party 0's: the host starts there
  DeployConfig d_;
  std::string dir_;
  std::unique_ptr<ExpertHost> host_;
  std::unique_ptr<GrpcTransport> server_, client_;
};

TEST_F(HostOverGrpc, BadCallsAreRefusedWithoutStateChange) {
  const size_t C = m_.d_model;
  EXPECT_TRUE(client_->call(0, 1, MsgKind::kControl, test::begin_message(first_turn_)).empty());
  const Bytes out = client_->call(0, 1, MsgKind::kExpertForward, expert_call(0, 5, 5 * C));
  EXPECT_EQ(out.size(), 5 * C * sizeof(float));
  const test::HostState before(*host_);

  expect_refused(MsgKind::kExpertForward, expert_call(0, 5, 4 * C), "truncated message");
  expect_refused(MsgKind::kExpertForward, expert_call(0, 5, 5 * C, 4), "4 unexpected trailing bytes");
  expect_refused(MsgKind::kExpertForward, expert_call(9, 5, 5 * C), "not an MoE layer");
  expect_refused(MsgKind::kExpertBackward, expert_call(0, 4, 4 * C), "does not match the rows of the last forward");
  expect_refused(MsgKind::kExpertForward, expert_call(0, 1000, 1000 * C), "RESOURCE_EXHAUSTED");
  Writer bad_op;
  bad_op.u32(99);
  expect_refused(MsgKind::kControl, bad_op.take(), "unknown control operation 99");
  Writer bad_update;
  bad_update.u32(static_cast<uint32_t>(ControlOp::kApplyUpdate));
  bad_update.f32(2.0f);
  bad_update.f32(0.01f);
  expect_refused(MsgKind::kControl, bad_update.take(), "out of range");
  expect_refused(MsgKind::kControl, Bytes(2), "truncated message");

  wire::CallRequest req;
  req.kind = 9;
  req.from = 0;
  grpc::Status s = raw(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("unknown message kind 9"), std::string::npos) << s.error_message();
  req.kind = wire::CONTROL;
  req.from = 2;  // party 0's certificate claiming to be party 2
  s = raw(req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(s.error_message().find("certificate's CN is 'party0'"), std::string::npos) << s.error_message();
  req.from = 7;
  EXPECT_EQ(raw(req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ByteBuffer junk = to_buffer(std::string("\x22\x7f" "abc", 5)), ignored;
  grpc::ClientContext ctx;
  s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      client_->channel(1).get(), grpc::internal::RpcMethod(wire::kPartyCall, grpc::internal::RpcMethod::NORMAL_RPC), &ctx,
      junk, &ignored);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("malformed CallRequest"), std::string::npos) << s.error_message();

  EXPECT_EQ(changed_since(before), "") << "a refused call changed the host's state";
  // The forward of before still stands: its backward is accepted and adds weight gradients.
  EXPECT_EQ(client_->call(0, 1, MsgKind::kExpertBackward, expert_call(0, 5, 5 * C)).size(), 5 * C * sizeof(float));
  EXPECT_NE(changed_since(before), "");

  // Only accepted calls are counted, as payload bytes in each direction.
  const TrafficStats st = client_->traffic();
  const auto fwd = st.by_kind_pair.at({MsgKind::kExpertForward, 1, 0});
  EXPECT_EQ(fwd.messages, 1u);
  EXPECT_EQ(fwd.bytes, 5 * C * sizeof(float));
}

// The server itself requires a client certificate signed by its CA: a client that trusts the
// server (same CA) but presents no certificate, or one from another CA, is not served.
TEST_F(HostOverGrpc, ServerRequiresAClientCertificateOfItsCa) {
  const std::string other = dir_ + "-other";
  make_certs(d_, other);
  const TlsFiles ours = read_tls_files(dir_, "party0"), theirs = read_tls_files(other, "party0");
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = ours.ca;
  EXPECT_EQ(begin_turn_as(no_cert).error_code(), grpc::StatusCode::UNAVAILABLE);
  grpc::SslCredentialsOptions foreign = no_cert;
  foreign.pem_private_key = theirs.key;
  foreign.pem_cert_chain = theirs.cert;
  EXPECT_EQ(begin_turn_as(foreign).error_code(), grpc::StatusCode::UNAVAILABLE);
  grpc::SslCredentialsOptions good = no_cert;
  good.pem_private_key = ours.key;
  good.pem_cert_chain = ours.cert;
  EXPECT_TRUE(begin_turn_as(good).ok()) << "the same call with party 0's own certificate is served";
  fs::remove_all(other);
}

// party0's certificate re-issued by the test's CA with a validity that ended yesterday.
void write_expired_party0(const std::string& ca_dir, const std::string& out_dir) {
  fs::create_directories(out_dir);
  fs::copy_file(fs::path(ca_dir) / "ca.pem", fs::path(out_dir) / "ca.pem");
  fs::copy_file(fs::path(ca_dir) / "party0.key", fs::path(out_dir) / "party0.key");
  auto read_pem = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::string ca_pem = read_pem(fs::path(ca_dir) / "ca.pem"), ca_key_pem = read_pem(fs::path(ca_dir) / "ca.key"),
                    key_pem = read_pem(fs::path(ca_dir) / "party0.key");
  BIO* b1 = BIO_new_mem_buf(ca_pem.data(), (int)ca_pem.size());
  BIO* b2 = BIO_new_mem_buf(ca_key_pem.data(), (int)ca_key_pem.size());
  BIO* b3 = BIO_new_mem_buf(key_pem.data(), (int)key_pem.size());
  X509* ca = PEM_read_bio_X509(b1, nullptr, nullptr, nullptr);
  EVP_PKEY* ca_key = PEM_read_bio_PrivateKey(b2, nullptr, nullptr, nullptr);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(b3, nullptr, nullptr, nullptr);
  ASSERT_TRUE(ca && ca_key && key);
  X509* c = X509_new();
  X509_set_version(c, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c), 99);
  X509_gmtime_adj(X509_getm_notBefore(c), -2 * 86400);
  X509_gmtime_adj(X509_getm_notAfter(c), -86400);
  X509_set_pubkey(c, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("party0"), -1,
                             -1, 0);
  X509_set_issuer_name(c, X509_get_subject_name(ca));
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca, c, nullptr, nullptr, 0);
  for (auto [nid, value] : {std::pair{NID_subject_alt_name, "DNS:party0,IP:127.0.0.1"},
                            std::pair{NID_ext_key_usage, "serverAuth,clientAuth"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(c, ext, -1);
    X509_EXTENSION_free(ext);
  }
  ASSERT_TRUE(X509_sign(c, ca_key, EVP_sha256()));
  FILE* f = std::fopen((fs::path(out_dir) / "party0.pem").c_str(), "w");
  PEM_write_X509(f, c);
  std::fclose(f);
  X509_free(c);
  X509_free(ca);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(key);
  BIO_free(b1);
  BIO_free(b2);
  BIO_free(b3);
}

// An expired certificate: a party will not start with one (a clear error naming the file and
// the date), and a host does not serve a caller presenting one, though its CA and CN are right.
TEST_F(HostOverGrpc, ExpiredCertificatesAreRefused) {
  const std::string expired = dir_ + "-expired";
  write_expired_party0(dir_, expired);
  try {
    read_tls_files(expired, "party0");
    ADD_FAILURE() << "an expired certificate was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("party0.pem expired on"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("pcmoe certs"), std::string::npos) << e.what();
  }
  auto begin_with = [this](const std::string& cert, const std::string& key) {
    grpc::SslCredentialsOptions opts;
    opts.pem_root_certs = read_tls_files(dir_, "party0").ca;
    opts.pem_cert_chain = cert;
    opts.pem_private_key = key;
    return begin_turn_as(opts);
  };
  std::ifstream pem(fs::path(expired) / "party0.pem"), key(fs::path(expired) / "party0.key");
  std::stringstream p, k;
  p << pem.rdbuf();
  k << key.rdbuf();
  EXPECT_EQ(begin_with(p.str(), k.str()).error_code(), grpc::StatusCode::UNAVAILABLE) << "the handshake fails";
  const TlsFiles good = read_tls_files(dir_, "party0");
  EXPECT_TRUE(begin_with(good.cert, good.key).ok()) << "the same key with its valid certificate is served";
  fs::remove_all(expired);
}

// The host orders turns itself, by the turn inside each begin and the schedule: the step label
// of a call orders nothing, so a label of 2^64-1 shuts no one out. A call from a party whose turn
// it is not, and a begin of turn 2^64-1, are refused naming the caller, with no state change.
TEST_F(HostOverGrpc, TurnsAreTheHostsNotTheStepLabels) {
  const size_t C = m_.d_model;
  GrpcTransport party2(d_, 2, read_tls_files(dir_, "party2"));
  client_->set_step(UINT64_MAX);
  EXPECT_TRUE(client_->call(0, 1, MsgKind::kControl, test::begin_message(first_turn_)).empty());
  client_->set_step(0);
  EXPECT_EQ(client_->call(0, 1, MsgKind::kExpertForward, expert_call(0, 5, 5 * C)).size(), 5 * C * sizeof(float));
  const test::HostState mid_turn(*host_);
  const std::string turn = std::to_string(first_turn_);
  expect_refused(MsgKind::kExpertBackward, expert_call(0, 5, 5 * C),
                 "party 1 refused expert_backward from party 2: expert_backward during turn " + turn +
                     ", which is party 0's",
                 &party2);
  expect_refused(MsgKind::kControl, test::begin_message(first_turn_ + 1), "begin of turn " + std::to_string(first_turn_ + 1) +
                                                                           " while turn " + turn + " (party 0's) is open");
  EXPECT_EQ(changed_since(mid_turn), "");

  client_->call(0, 1, MsgKind::kExpertBackward, expert_call(0, 5, 5 * C));
  Writer sums, update;
  sums.u32(static_cast<uint32_t>(ControlOp::kGradSqSums));
  client_->call(0, 1, MsgKind::kControl, sums.take());
  update.u32(static_cast<uint32_t>(ControlOp::kApplyUpdate));
  update.f32(1.0f);
  update.f32(0.01f);
  EXPECT_TRUE(client_->call(0, 1, MsgKind::kControl, update.take()).empty());
  const test::HostState after_turn(*host_);
  EXPECT_EQ(after_turn.turn, first_turn_ + 1);
  EXPECT_EQ(after_turn.holder, -1);
  expect_refused(MsgKind::kControl, test::begin_message(UINT64_MAX),
                 "party 1 refused control from party 0: begin of turn 18446744073709551615, but turn " +
                     std::to_string(first_turn_ + 1) + " is next");
  EXPECT_EQ(changed_since(after_turn), "");
  // Between turns a forward is an evaluation, any party's: served, nothing kept.
  EXPECT_EQ(party2.call(2, 1, MsgKind::kExpertForward, expert_call(0, 5, 5 * C)).size(), 5 * C * sizeof(float));
  EXPECT_EQ(changed_since(after_turn), "");
}

// A call of the host's largest batch is above the per-message bound: it goes as a stream of
// chunks both ways and gives exactly what the same host computes in process. Streams that are
// truncated, reordered, duplicated, inconsistent or too large are refused with no state change.
TEST_F(HostOverGrpc, LargeCallsStreamInChunksAndBadStreamsAreRefused) {
  const size_t C = m_.d_model, rows = 32;
  ExpertHost reference(m_, t_, 1, 3, (int)rows);
  reference.start_at(first_turn_);
  const Bytes b = test::begin_message(first_turn_);
  reference.handle(MsgKind::kControl, 0, b);
  client_->call(0, 1, MsgKind::kControl, b);
  const Bytes fwd = expert_call(0, rows, rows * C);
  ASSERT_GT(fwd.size(), d_.max_message_bytes);
  wire::CallRequest unary;
  unary.kind = wire::EXPERT_FORWARD;
  unary.payload = to_string(fwd);
  EXPECT_EQ(raw(unary).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << "too large for one message";
  const Bytes y = client_->call(0, 1, MsgKind::kExpertForward, fwd);
  EXPECT_EQ(y, reference.handle(MsgKind::kExpertForward, 0, fwd)) << "streamed forward = in-process forward";
  const test::HostState before(*host_);

  const Bytes bwd = expert_call(0, rows, rows * C);
  const std::string p = to_string(bwd);  // 2,060 bytes: chunks of 1,024, 1,024, 12
  const std::string c0 = p.substr(0, 1024), c1 = p.substr(1024, 1024), c2 = p.substr(2048);
  const uint32_t kind = wire::EXPERT_BACKWARD;
  struct Bad {
    std::vector<std::tuple<uint32_t, std::string, uint64_t>> chunks;
    uint64_t total;
    uint32_t from;
    grpc::StatusCode code;
    std::string needle;
  };
  const std::vector<Bad> bad = {
      {{{0, c0, 0}, {1, c1, 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "truncated stream: 2048 of 2060 bytes"},
      {{{0, c0, 0}, {2, c2, 0}, {1, c1, 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "chunk 2 where chunk 1 was due"},
      {{{0, c0, 0}, {1, c1, 0}, {1, c1, 0}, {2, c2, 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT,
       "chunk 1 where chunk 2 was due"},
      {{{1, c0, 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "starts with chunk 1"},
      {{{0, c0, 0}, {1, c1, 7}, {2, c2, 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "changes the call's"},
      {{{0, c0, 0}, {1, c1, 0}, {2, c2 + "x", 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "runs past"},
      {{{0, c0, 0}, {1, "", 0}}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "is empty"},
      {{}, p.size(), 0, grpc::StatusCode::INVALID_ARGUMENT, "stream without chunks"},
      {{{0, c0, 0}}, 1u << 30, 0, grpc::StatusCode::RESOURCE_EXHAUSTED, "the largest call of this deployment is 16384"},
      {{{0, c0, 0}, {1, c1, 0}, {2, c2, 0}}, p.size(), 2, grpc::StatusCode::PERMISSION_DENIED, "certificate's CN is 'party0'"},
  };
  for (const Bad& x : bad) {
    const grpc::Status s = raw_stream(kind, x.from, x.total, x.chunks);
    EXPECT_EQ(s.error_code(), x.code) << x.needle << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(x.needle), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(changed_since(before), "") << "a refused stream changed the host's state";

  // The complete stream, written by hand, is served: the reply (2,048 bytes) comes back in chunks.
  std::string reply;
  ASSERT_TRUE(raw_stream(kind, 0, p.size(), {{0, c0, 0}, {1, c1, 0}, {2, c2, 0}}, &reply).ok());
  EXPECT_EQ(to_bytes(reply), reference.handle(MsgKind::kExpertBackward, 0, bwd)) << "streamed backward = in process";
  const ParamSet& ours = host_->params();
  const ParamSet& ref = reference.params();
  EXPECT_TRUE(std::equal(ours.grads(), ours.grads() + ours.numel(), ref.grads())) << "the same weight gradients";

  // The transport counts streamed payloads as it counts any other.
  const TrafficCount f = client_->traffic().by_kind_pair.at({MsgKind::kExpertForward, 0, 1});
  EXPECT_EQ(f.messages, 1u);
  EXPECT_EQ(f.bytes, fwd.size());
}

TEST(Deploy, InsecureOnlyOnLoopback) {
  DeployConfig d;
  d.parties = {{"party0", "127.0.0.1:5000"}, {"party1", "10.0.0.2:5000"}};
  d.max_message_bytes = 1 << 20;
  d.max_payload_bytes = 1 << 20;
  EXPECT_THROW(GrpcTransport(d, 0, std::nullopt), std::runtime_error);
  d.parties[1].address = "localhost:5001";
  EXPECT_NO_THROW(GrpcTransport(d, 0, std::nullopt));
}

}  // namespace
