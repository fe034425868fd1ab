// Development certificates for a deployment (`pcmoe certs`): one CA, and per party a key and a
// certificate signed by it with CN = the party's name, and as subject-alternative names its name
// and the host of its address (nothing else: not localhost or 127.0.0.1 unless that is where it
// listens); usable as TLS server and client.
#pragma once
#include <string>

#include "net/deploy.h"

namespace pcmoe::net {

// Writes DIR/ca.pem, DIR/ca.key and DIR/<name>.pem, DIR/<name>.key for every party (keys 0600).
// A party's host needs only ca.pem and its own pair.
void make_certs(const DeployConfig& deploy, const std::string& dir);

// What a party presents and trusts: PEM texts.
struct TlsFiles {
  std::string ca, cert, key;
};
// Reads DIR/ca.pem, DIR/<name>.pem, DIR/<name>.key; throws naming a missing or unreadable file,
// or a certificate that has expired or is not valid yet (with its date).
TlsFiles read_tls_files(const std::string& dir, const std::string& name);

}  // namespace pcmoe::net
