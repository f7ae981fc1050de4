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
exec "$VENV/bin/python" -m pytest "$@"
