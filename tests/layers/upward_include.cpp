// Compiled against train/'s library only: collab/ sits above train/ in the layer order, so this
// include must not be found (tests/layers/test_layers.py expects this file not to compile).
#include "collab/transport.h"
