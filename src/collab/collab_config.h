// The checks of the "collab" section that need collab/ itself: its wire dtypes
// (collab/expert_wire.h). The section is read with the run config (train/train_config.h), below
// collab/, so whoever loads a config for a command checks it here too.
#pragma once
#include "train/train_config.h"

namespace pcmoe {

// Throws naming the key for a collab.wire_dtype other than fp32, bf16 and fp16.
void check_collab_config(const CollabConfig& c);

}  // namespace pcmoe
