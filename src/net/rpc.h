// gRPC methods that carry the wire messages of src/net/wire.h as raw bytes: a service built
// method by method (unary methods, whose request is decoded before the method sees it, and
// bidirectional streams, whose method reads and decodes each message), and a blocking unary
// call with the caller's deadline. A unary request that does not decode is answered
// INVALID_ARGUMENT without reaching the method.
#pragma once
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/support/method_handler.h>

#include <functional>
#include <string>
#include <vector>

#include "net/wire.h"

namespace pcmoe::net {

inline grpc::ByteBuffer to_buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string from_buffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

class UnaryService : public grpc::Service {
 public:
  template <class Req, class Rep>
  void add(const char* method, std::function<grpc::Status(grpc::ServerContext*, const Req&, Rep&)> fn) {
    using Handler = grpc::internal::RpcMethodHandler<UnaryService, grpc::ByteBuffer, grpc::ByteBuffer>;
    AddMethod(new grpc::internal::RpcServiceMethod(
        method, grpc::internal::RpcMethod::NORMAL_RPC,
        new Handler(
            [fn](UnaryService*, grpc::ServerContext* ctx, const grpc::ByteBuffer* in, grpc::ByteBuffer* out) {
              Req req;
              try {
                wire::decode(from_buffer(*in), req);
              } catch (const std::exception& e) {
                return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
              }
              Rep rep;
              grpc::Status s = fn(ctx, req, rep);
              if (s.ok()) *out = to_buffer(wire::encode(rep));
              return s;
            },
            this)));
  }

  using Stream = grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;
  void add_bidi(const char* method, std::function<grpc::Status(grpc::ServerContext*, Stream*)> fn) {
    using Handler = grpc::internal::BidiStreamingHandler<UnaryService, grpc::ByteBuffer, grpc::ByteBuffer>;
    AddMethod(new grpc::internal::RpcServiceMethod(
        method, grpc::internal::RpcMethod::BIDI_STREAMING,
        new Handler([fn](UnaryService*, grpc::ServerContext* ctx, Stream* stream) { return fn(ctx, stream); }, this)));
  }
};

template <class Req, class Rep>
grpc::Status unary_call(grpc::Channel& channel, const char* method, grpc::ClientContext& ctx, const Req& req, Rep& rep) {
  grpc::ByteBuffer out;
  grpc::Status s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      &channel, grpc::internal::RpcMethod(method, grpc::internal::RpcMethod::NORMAL_RPC), &ctx, to_buffer(wire::encode(req)),
      &out);
  if (!s.ok()) return s;
  try {
    wire::decode(from_buffer(out), rep);
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INTERNAL, std::string("reply: ") + e.what()};
  }
  return s;
}

}  // namespace pcmoe::net
