#!/usr/bin/env bash
# Install (if needed) and run the test suite: what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m pytest tests "$@"
