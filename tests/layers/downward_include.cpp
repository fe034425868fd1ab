// Compiled against train/'s library only: its own folder and the folders below it are reachable
// (tests/layers/test_layers.py expects this file to compile, so that the failure of
// upward_include.cpp is the layer order's doing).
#include "common/json_fields.h"
#include "privacy/dp_sgd.h"
#include "train/step.h"
