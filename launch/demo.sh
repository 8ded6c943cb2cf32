#!/usr/bin/env bash
# The whole depthpi pipeline on the embedded synthetic RGB-D set, on CPU:
# build shards → baseline RGB → baseline depth → teacher → student → evaluate all four.
#   bash launch/demo.sh            (fresh machine: sets up .venv itself)
# Environment: DEMO_TRAIN / DEMO_TEST / DEMO_UNLABELED sample counts, DEMO_EPOCHS.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
set -euo pipefail
SHARDS=shards/synth
EPOCHS="${DEMO_EPOCHS:-6}"
WORKERS="$(python -c 'import os; print(max(1, min(4, os.cpu_count() or 1)))')"
START=$(date +%s)

echo "== 1/6 synthetic shards -> $SHARDS"
depthpi shards build --source synthetic --out "$SHARDS" --train "${DEMO_TRAIN:-6000}" \
  --test "${DEMO_TEST:-480}" --unlabeled "${DEMO_UNLABELED:-0}" --per-shard 100 --workers "$WORKERS"
depthpi shards inspect "$SHARDS/train" --count 8 --size 129 --out runs/demo/contact_sheet.png

common=(optim.epochs="$EPOCHS" data.train="$SHARDS/train" data.test="$SHARDS/test")
echo "== 2/6 baseline RGB";   python launch/train_baseline.py --config configs/demo/baseline_rgb.yaml "${common[@]}"
echo "== 3/6 baseline depth"; python launch/train_baseline.py --config configs/demo/baseline_depth.yaml "${common[@]}"
echo "== 4/6 teacher";        python launch/train_teacher.py --config configs/demo/teacher.yaml "${common[@]}"
echo "== 5/6 student";        python launch/train_student.py --config configs/demo/student.yaml "${common[@]}"

echo "== 6/6 evaluation on $SHARDS/test (unseen subjects and cameras)"
printf '\n| model | MPJPE (mm) | × mean pose | PA-MPJPE (mm) | PCK@50mm | AUC |\n|---|---|---|---|---|---|\n' > runs/demo/results.md
for run in baseline_rgb baseline_depth teacher student; do
  depthpi eval --ckpt runs/demo/$run/export/last.pt --shards "$SHARDS/test" --out runs/demo/$run/eval >/dev/null
  python - "$run" >> runs/demo/results.md <<'PY'
import json, sys
m = json.load(open(f"runs/demo/{sys.argv[1]}/eval/metrics.json"))
print(f"| {sys.argv[1]} | {m['mpjpe']:.1f} | {m['mpjpe'] / m['mean_pose_mpjpe']:.2f} | {m['pa_mpjpe']:.1f} | "
      f"{m['pck']:.3f} | {m['auc']:.3f} |")
PY
done
python - >> runs/demo/results.md <<'PY'
import json
m = json.load(open("runs/demo/baseline_rgb/eval/metrics.json"))
print(f"\nMean-pose reference (the training split's mean pose on this test split): {m['mean_pose_mpjpe']:.1f} mm.")
PY
cat runs/demo/results.md
echo
echo "Done in $(( $(date +%s) - START )) s."
echo "TensorBoard:  .venv/bin/tensorboard --logdir runs/demo"
echo "Plots:        runs/demo/<model>/eval/pck_curve.png, per_joint.md; contact sheet runs/demo/contact_sheet.png"
