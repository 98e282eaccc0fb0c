#!/usr/bin/env bash
# Debian's boost headers, for tests/test_waterz.py: waterz ships compiled only a few scoring
# functions and compiles any other on first use, which needs them. Idempotent: does nothing when
# they are installed. Needs root to install.
set -euo pipefail
if [ -f /usr/include/boost/multi_array.hpp ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends libboost-dev >/dev/null ||
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends libboost-dev >/dev/null; }
