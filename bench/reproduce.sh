#!/usr/bin/env bash
# The thesis' core study (Tables 6.1-6.3, 6.8, 6.9) end to end on the synthetic benchmark,
# at CPU scale (configs/repro/cpu.yaml), through the real system: shards -> engine ->
# precompute -> eval -> report.
#   bash bench/reproduce.sh          (fresh machine: sets up .venv itself; ~1.4 h of training a seed on 2 cores,
#                                    ~5 h for 5 seeds with LANES=2)
# Phase 1, per seed (each step waits for the ones it starts from):
#   1.2 RGB baseline, 2.1 depth baseline            from scratch, E1 epochs
#   3.2 teacher (depth branch from 2.1)             E1 epochs
#   1.4 RGB baseline continued from 1.2             E2 epochs  (the students' control)
#   8.1 student, online teacher 3.2, from 1.2       E2 epochs
#   precompute teacher 3.2 features (4 views), 8.1 reading them
#   9.1 RGB teacher (1.4)
# Low-label phase (LOW=1; our rows, the positive control of the distillation path): the
# training split cut into a labelled 1/8 and the other 7/8 as unlabelled RGB-D pairs
# (`depthpi shards subset`); per seed, after its phase 1 (teacher 3.2 is trained on every label):
#   low-1.2 RGB from scratch on the 1/8                         LE1 epochs
#   low-1.4 control: low-1.2 continued on the 1/8               LE2 epochs
#   low-8.2 feature distillation on the 1/8 + pairs, online     LE2 epochs  (from low-1.2)
#   precompute 3.2 on both parts, low-8.2-precomputed reading them
#   low-pose output distillation: 3.2's predicted pose as the pairs' target
# Phase 2 (EXTRAS=1, once the phases above are done for every seed): 8.3 attention before
# ReLU, 8.2 + unlabelled pairs and the α ×10 ablation for every seed; the α ×100 and tap
# ablations for ABLATION_SEEDS ("0").
# Every model's last weights are evaluated on the test split (unseen subjects and cameras;
# no model is selected on it), then bench/reproduce_report.py writes docs/results.md.
# A re-run skips every model whose evaluation exists and resumes the others from their
# last checkpoint, so the study can be stopped and restarted at will.
# Every model's training and precompute time goes to $REPRO_OUT/timings.tsv (seconds, by phase),
# which the report sums into the time of each phase.
# Environment: SEEDS ("0 1 2 3 4"), LANES (seed chains at once; default 1: one trainer and
# its loader worker fill 2 cores), LOW (1), EXTRAS (1), ABLATION_SEEDS ("0"), E1 (12), E2 (6),
# LE1 (50), LE2 (33), REPRO_TRAIN / REPRO_TEST / REPRO_UNLABELED sample counts (9600/600/2400),
# REPRO_SHARDS (shards/repro), REPRO_OUT (runs/repro).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SHARDS="${REPRO_SHARDS:-shards/repro}"
OUT="${REPRO_OUT:-runs/repro}"
E1="${E1:-12}"
E2="${E2:-6}"
LE1="${LE1:-50}"
LE2="${LE2:-33}"
TAP=layer3.1.post_relu   # the end of layer3: the thesis' block 13, in the ResNet-18 of this scale

run_model() {  # run_model <seed> <id> <entry> <epochs> [overrides...]: train configs/repro/<id>.yaml, evaluate last.pt
  local seed=$1 id=$2; shift 2
  run_variant "$seed" "$id" "$id" "$@"
}

run_variant() {  # run_variant <seed> <name> <config id> <entry> <epochs> [overrides...]: a row under another name
  local seed=$1 id=$2 config=$3 entry=$4 epochs=$5; shift 5
  local dir="$OUT/seed$seed/$id"
  if [[ -f "$dir/eval/metrics.json" ]]; then echo "[seed $seed] $id: done, skipped"; return; fi
  echo "[seed $seed] $id: training ($epochs epochs) -> $dir ($(date +%H:%M))"
  local start=$SECONDS
  python "launch/train_$entry.py" --config "configs/repro/$config.yaml" run.seed="$seed" run.out_dir="$dir" \
    optim.epochs="$epochs" data.train="$SHARDS/train" data.test="$SHARDS/test" "$@" >> "$OUT/logs/seed$seed-$id.log" 2>&1
  depthpi eval --ckpt "$dir/export/last.pt" --shards "$SHARDS/test" --out "$dir/eval" --workers 1 \
    >> "$OUT/logs/seed$seed-$id.log" 2>&1
  timing "$seed" "$id" "$start"
  echo "[seed $seed] $id: $(python -c "import json,sys; m=json.load(open(sys.argv[1])); print('MPJPE %.1f mm (mean pose %.1f)' % (m['mpjpe'], m['mean_pose_mpjpe']))" "$dir/eval/metrics.json")"
}

timing() {  # timing <seed> <what> <start SECONDS>: one line of $OUT/timings.tsv
  printf '%s\t%s\t%s\t%s\n' "$PHASE" "$1" "$2" "$(( SECONDS - $3 ))" >> "$OUT/timings.tsv"
}

precompute() {  # precompute <seed> <source split> <out>: teacher 3.2's tap, 4 views, unless done
  local seed=$1 source=$2 out=$3 start=$SECONDS
  [[ -f "$out/manifest.json" ]] && return
  echo "[seed $seed] precompute: teacher 3.2 at $TAP, 4 views, $source -> $out ($(date +%H:%M))"
  depthpi precompute --teacher "$OUT/seed$seed/3.2/export/last.pt" --shards "$source" --tap "$TAP" \
    --views 4 --dtype fp16 --seed "$seed" --out "$out" >> "$OUT/logs/seed$seed-precompute.log" 2>&1
  timing "$seed" "precompute $(basename "$source")" "$start"
}

required() {  # phase 1 of one seed, in dependency order
  local seed=$1 R="$OUT/seed$1"
  run_model "$seed" 1.2 baseline "$E1"
  run_model "$seed" 2.1 baseline "$E1"
  run_model "$seed" 3.2 teacher "$E1" model.depth_branch_checkpoint="$R/2.1/export/last.pt"
  run_model "$seed" 1.4 baseline "$E2" model.init_checkpoint="$R/1.2/export/last.pt"
  local student=(model.init_checkpoint="$R/1.2/export/last.pt" teacher.weights="$R/3.2/export/last.pt")
  run_model "$seed" 8.1 student "$E2" "${student[@]}"
  precompute "$seed" "$SHARDS/train" "$R/features/train"
  run_model "$seed" 8.1-precomputed student "$E2" "${student[@]}" teacher.features="$R/features/train"
  run_model "$seed" 9.1 student "$E2" model.init_checkpoint="$R/1.2/export/last.pt" \
    teacher.weights="$R/1.4/export/last.pt"
}

lowlabel() {  # the low-label rows of one seed (its 3.2 from phase 1)
  local seed=$1 R="$OUT/seed$1"
  local low=(data.train="$SHARDS/train-1of8")
  run_model "$seed" low-1.2 baseline "$LE1" "${low[@]}"
  local start=(model.init_checkpoint="$R/low-1.2/export/last.pt")
  run_model "$seed" low-1.4 baseline "$LE2" "${low[@]}" "${start[@]}"
  local student=("${low[@]}" "${start[@]}" data.unlabeled="$SHARDS/pairs-7of8" teacher.weights="$R/3.2/export/last.pt")
  run_model "$seed" low-8.2 student "$LE2" "${student[@]}"
  precompute "$seed" "$SHARDS/train-1of8" "$R/features/train-1of8"
  precompute "$seed" "$SHARDS/pairs-7of8" "$R/features/pairs-7of8"
  run_model "$seed" low-8.2-precomputed student "$LE2" "${student[@]}" teacher.features="$R/features/train-1of8" \
    teacher.unlabeled_features="$R/features/pairs-7of8"
  run_model "$seed" low-pose student "$LE2" "${student[@]}"
}

extras() {  # phase 2 of one seed: the other Table 6.8 rows and why 8.1 does (not) beat 1.4
  local seed=$1 R="$OUT/seed$1"
  local student=(model.init_checkpoint="$R/1.2/export/last.pt" teacher.weights="$R/3.2/export/last.pt")
  run_model "$seed" 8.3 student "$E2" "${student[@]}"
  run_model "$seed" 8.2 student "$E2" "${student[@]}" data.unlabeled="$SHARDS/unlabeled"
  local stored=("${student[@]}" teacher.features="$R/features/train")
  run_variant "$seed" abl-alpha10 8.1-precomputed student "$E2" "${stored[@]}" \
    distill.alpha_warmup=1.0 distill.alpha_target=2.0
  [[ " ${ABLATION_SEEDS:-0} " == *" $seed "* ]] || return 0
  run_variant "$seed" abl-alpha100 8.1-precomputed student "$E2" "${stored[@]}" \
    distill.alpha_warmup=10.0 distill.alpha_target=20.0
  run_variant "$seed" abl-alpha100-layer3.0 8.1 student "$E2" "${student[@]}" \
    distill.alpha_warmup=10.0 distill.alpha_target=20.0 distill.tap=layer3.0.post_relu
}

if [[ "${1:-}" == "--phase" ]]; then  # one seed's phase (the lanes below call this)
  source .venv/bin/activate
  set -o pipefail
  PHASE=$2
  "$2" "$3"
  exit 0
fi

source launch/setup_env.sh
SEEDS="${SEEDS:-0 1 2 3 4}"
read -r -a seeds <<< "$SEEDS"
LANES="${LANES:-1}"
CORES="$(python -c 'import os; print(os.cpu_count() or 1)')"
START=$(date +%s)
mkdir -p "$OUT/logs"

echo "== synthetic benchmark -> $SHARDS"
declare -A COUNT=([train]="${REPRO_TRAIN:-9600}" [test]="${REPRO_TEST:-600}" [unlabeled]="${REPRO_UNLABELED:-2400}")
for split in train test unlabeled; do  # a split that is there is kept as it is
  if [[ ! -f "$SHARDS/$split/manifest.json" ]]; then
    depthpi shards build --source synthetic --out "$SHARDS" --train 0 --test 0 --unlabeled 0 --"$split" \
      "${COUNT[$split]}" --per-shard 100 --workers "$CORES"
  fi
done
if [[ "${LOW:-1}" == 1 ]]; then  # the low-label cut of the training split: links, no copies
  labeled_shards=$(( COUNT[train] / 8 / 100 ))  # 1/8 of the samples, 100 per shard
  depthpi shards subset "$SHARDS/train" --out "$SHARDS/train-1of8" --shards ":$labeled_shards"
  depthpi shards subset "$SHARDS/train" --out "$SHARDS/pairs-7of8" --shards "$labeled_shards:" --role unlabeled
fi

export OMP_NUM_THREADS=1
for phase in required $([[ "${LOW:-1}" == 1 ]] && echo lowlabel) $([[ "${EXTRAS:-1}" == 1 ]] && echo extras); do
  echo "== $phase: seeds ${seeds[*]}, $LANES at once; logs in $OUT/logs ($(date +%H:%M))"
  printf '%s\n' "${seeds[@]}" | xargs -P "$LANES" -I{} bash bench/reproduce.sh --phase "$phase" {}
  python bench/reproduce_report.py --runs "$OUT" --shards "$SHARDS/test" --out docs/results.md \
    --minutes $(( ($(date +%s) - START) / 60 ))
done
echo "Done in $(( ($(date +%s) - START) / 60 )) min."
