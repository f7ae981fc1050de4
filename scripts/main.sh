#!/usr/bin/env bash
# The main job on the embedded default dataset (synthetic scenes), on the CPU:
#   1. set up the environment (if needed);
#   2. pictures of augmented training samples -> output/data_preview
#      (the dataset is generated on first use under $DETECTRON2_DATASETS, default ./datasets);
#   3. the whole curriculum: semantic -> instance (frozen encoder) -> merge -> joint
#      fine-tuning; the merged model (which reproduces both stages) and the final one evaluated
#      -> output/curriculum (re-running resumes and skips finished stages);
#   4. the final model's predictions on a validation image -> output/demo, and its point
#      cloud seen as ground truth / 2D / 3D / disagreement -> output/pointcloud_views.png;
#   5. training curves -> output/curriculum/plots; then the results table.
# Extra arguments are config overrides for the curriculum (KEY VALUE ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PANOPTIC_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY="$VENV/bin/python"
OUT="${PANOPTIC_OUTPUT:-output}"
DATA="${DETECTRON2_DATASETS:-datasets}"
CONFIG=configs/synthetic/curriculum_R18_FPN.yaml
start=$(date +%s)

echo "[main] 1/4 data preview -> $OUT/data_preview"
"$PY" tools/visualize_data.py --config-file "$CONFIG" --output-dir "$OUT/data_preview" --num-images 2

echo "[main] 2/4 curriculum -> $OUT/curriculum"
"$PY" tools/train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT/curriculum" "$@"
# the run's final model: the joint stage's when the curriculum has one, else the merged model
WEIGHTS="$OUT/curriculum/joint/model_final.pth"
[ -f "$OUT/curriculum/joint/stage_complete.json" ] || WEIGHTS="$OUT/curriculum/merge/model_merged.pth"

echo "[main] 3/4 predictions of the final model -> $OUT/demo, $OUT/pointcloud_views.png"
"$PY" tools/demo.py --config-file "$CONFIG" --input "$DATA/synthetic_scenes/val/image/000000.png" \
  --intrinsics "$DATA/synthetic_scenes/val/camera/000000.json" --output "$OUT/demo" \
  MODEL.WEIGHTS "$WEIGHTS"
"$PY" tools/visualize_pointcloud.py --config-file "$CONFIG" --dataset synthetic_scenes_val \
  --index 0 --headless --output "$OUT/pointcloud_views.png" MODEL.WEIGHTS "$WEIGHTS"

echo "[main] 4/4 training curves -> $OUT/curriculum/plots"
# the headline curves (27 PNGs; every key of metrics.json, 87 PNGs, took twice as long):
# `tools/plot_metrics.py output/curriculum` without --keys plots them all
"$PY" tools/plot_metrics.py "$OUT/curriculum" --output-dir "$OUT/curriculum/plots" \
  --keys total_loss "loss_*" "task_weight/*" lr "sem_seg/mIoU" "sem_seg/IoU-*" "segm/AP" \
  "bbox/AP" "panoptic_seg/PQ*" "depth/AbsRel" "depth/d1" "point_branch/*"

echo
echo "[main] results on synthetic_scenes_val ($OUT/curriculum/summary.txt):"
cat "$OUT/curriculum/summary.txt"
echo "[main] done in $(( $(date +%s) - start )) s"
