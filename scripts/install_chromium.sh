#!/usr/bin/env bash
# Debian's headless Chromium and its driver, for tests/test_view.py (neuroglancer drawn in a real
# browser). Idempotent: does nothing when both are installed. Needs root to install.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
