#include "net/certs.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace pcmoe::net {
namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
using Key = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;

[[noreturn]] void fail(const std::string& what) {
  char buf[256] = "";
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  throw std::runtime_error("certificates: " + what + (buf[0] ? std::string(": ") + buf : std::string()));
}

Key ec_key() {
  Key k(EVP_EC_gen("P-256"));
  if (!k) fail("cannot generate an EC P-256 key");
  return k;
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, Free> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || !X509_add_ext(cert, ext.get(), -1)) fail("cannot add extension " + value);
}

// A certificate for `key` with CN `cn`, signed by issuer_key (self-signed when issuer is null).
Cert make_cert(EVP_PKEY* key, const std::string& cn, long serial, X509* issuer, EVP_PKEY* issuer_key,
               const std::string& san) {
  Cert c(X509_new());
  if (!c) fail("X509_new");
  X509_set_version(c.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), 365L * 24 * 3600);
  X509_set_pubkey(c.get(), key);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("pcmoe"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* signer = issuer ? issuer : c.get();
  X509_set_issuer_name(c.get(), X509_get_subject_name(signer));
  add_ext(c.get(), signer, NID_subject_key_identifier, "hash");
  if (issuer) {
    add_ext(c.get(), signer, NID_authority_key_identifier, "keyid:always");
    add_ext(c.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(c.get(), signer, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    add_ext(c.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth");
    add_ext(c.get(), signer, NID_subject_alt_name, san);
  } else {
    add_ext(c.get(), signer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    add_ext(c.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  }
  if (!X509_sign(c.get(), issuer_key ? issuer_key : key, EVP_sha256())) fail("cannot sign the certificate of " + cn);
  return c;
}

void write_file(const fs::path& path, const std::string& text, bool secret) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("certificates: cannot write " + path.string());
  if (secret) chmod(path.c_str(), 0600);
  out << text;
  if (!out.flush()) throw std::runtime_error("certificates: cannot write " + path.string());
}

std::string pem_key(EVP_PKEY* key) {
  std::unique_ptr<BIO, Free> bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)) fail("cannot encode a key");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, n);
}

std::string pem_cert(X509* cert) {
  std::unique_ptr<BIO, Free> bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(bio.get(), cert)) fail("cannot encode a certificate");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, n);
}

bool is_ip(const std::string& host) {
  return host.find_first_not_of("0123456789.") == std::string::npos || host.find(':') != std::string::npos;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string() + " (make certificates with `pcmoe certs`)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Refuses a certificate outside its validity period, saying when it ended or begins: TLS would
// refuse it at every handshake, with a message that names neither the file nor the date.
void check_validity(const fs::path& path, const std::string& pem) {
  std::unique_ptr<BIO, Free> bio(BIO_new_mem_buf(pem.data(), (int)pem.size()));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) throw std::runtime_error(path.string() + " is not a PEM certificate");
  auto when = [](const ASN1_TIME* t) {
    std::unique_ptr<BIO, Free> out(BIO_new(BIO_s_mem()));
    ASN1_TIME_print(out.get(), t);
    char* data = nullptr;
    const long n = BIO_get_mem_data(out.get(), &data);
    return std::string(data, n);
  };
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0)
    throw std::runtime_error("certificate " + path.string() + " expired on " + when(X509_get0_notAfter(cert.get())) +
                             " (make new ones with `pcmoe certs`)");
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0)
    throw std::runtime_error("certificate " + path.string() + " is not valid before " +
                             when(X509_get0_notBefore(cert.get())) + " (is this machine's clock right?)");
}

}  // namespace

void make_certs(const DeployConfig& deploy, const std::string& dir) {
  fs::create_directories(dir);
  Key ca_key = ec_key();
  Cert ca = make_cert(ca_key.get(), "pcmoe development CA", 1, nullptr, nullptr, "");
  write_file(fs::path(dir) / "ca.pem", pem_cert(ca.get()), false);
  write_file(fs::path(dir) / "ca.key", pem_key(ca_key.get()), true);
  long serial = 2;
  for (const PartyAddress& p : deploy.parties) {
    // Its name and its own address host only: a loopback name only where it listens on loopback.
    const std::string host = address_host(p.address);
    std::string san = "DNS:" + p.name;
    if (host != p.name) san += (is_ip(host) ? ",IP:" : ",DNS:") + host;
    Key key = ec_key();
    Cert cert = make_cert(key.get(), p.name, serial++, ca.get(), ca_key.get(), san);
    write_file(fs::path(dir) / (p.name + ".pem"), pem_cert(cert.get()), false);
    write_file(fs::path(dir) / (p.name + ".key"), pem_key(key.get()), true);
  }
}

TlsFiles read_tls_files(const std::string& dir, const std::string& name) {
  TlsFiles f{read_file(fs::path(dir) / "ca.pem"), read_file(fs::path(dir) / (name + ".pem")),
             read_file(fs::path(dir) / (name + ".key"))};
  check_validity(fs::path(dir) / "ca.pem", f.ca);
  check_validity(fs::path(dir) / (name + ".pem"), f.cert);
  return f;
}

}  // namespace pcmoe::net
