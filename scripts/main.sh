#!/usr/bin/env bash
# The main job on the embedded default dataset (synthetic scenes): set up the environment
# (if needed), generate the dataset on first use under $DETECTRON2_DATASETS (default
# ./datasets), and write pictures of augmented training samples to ./output/data_preview:
# image, semantic and instance overlays, depth colour map, and the back-projected,
# class-coloured point cloud as PLY plus a headless Open3D rendering.
# Extra arguments go to tools/visualize_data.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PANOPTIC_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/python" tools/visualize_data.py \
  --config-file configs/synthetic/curriculum_R18_FPN.yaml \
  --output-dir output/data_preview "$@"
