#!/usr/bin/env bash
# Set up the environment (if needed) and run the test suite. Extra arguments go to pytest.
#   bash scripts/test.sh
#   bash scripts/test.sh -k geometry -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PANOPTIC_VENV:-$ROOT/.venv}"
# the tests run exported ONNX models: always with the export extra (onnx, onnxruntime)
PANOPTIC_EXTRAS="${PANOPTIC_EXTRAS:+$PANOPTIC_EXTRAS,}export" bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# the suite writes up to ~1 GB of checkpoints under the temporary folder at a time: say how
# much room there is, so that a full disk is recognised as such in a failed run's log
TMP="${TMPDIR:-/tmp}"
echo "[test] $(df -Pk "$TMP" | awk 'NR == 2 {printf "%.1f GB", $4 / 1048576}') free in $TMP"
exec "$VENV/bin/python" -m pytest "$@"
