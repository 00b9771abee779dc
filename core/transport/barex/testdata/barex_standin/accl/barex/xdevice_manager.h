// STAND-IN (see standin.h): not the barex SDK.
#pragma once
#include "standin.h"
