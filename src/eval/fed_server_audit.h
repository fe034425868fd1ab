// The leakage audit's federated server (config section "audit", docs/audit.md): beside a
// federated mode's rounds of `pcmoe collab`, it guesses from each party's decoded update which
// tokens the party's round held (eval/bag_of_words.h). fed/ reaches it through
// fed::ServerObserver, so the federated runner holds no attack of its own.
#pragma once
#include "fed/fed_runner.h"

namespace pcmoe::eval {

// The observer of one mode's server: null (with a note in `facts`) when the run has no audit
// section, or when it names no public text (fed.public_categories) to fit the rule on.
std::unique_ptr<fed::ServerObserver> fed_server_audit(CollabContext& ctx, const std::string& mode,
                                                      const std::vector<float>& base, nlohmann::json& facts);

}  // namespace pcmoe::eval
