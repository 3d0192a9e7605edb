#!/usr/bin/env bash
# Every test, every level (unit, and integration against real swtpm, SoftHSM2 and Mosquitto),
# after installing whatever is missing. Simulator tests never skip: a missing simulator fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
npm test
