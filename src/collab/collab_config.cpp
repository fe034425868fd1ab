#include "collab/collab_config.h"

#include "collab/expert_wire.h"

namespace pcmoe {

void check_collab_config(const CollabConfig& c) { parse_wire_dtype(c.wire_dtype); }

}  // namespace pcmoe
