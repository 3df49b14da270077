#!/usr/bin/env bash
# How the bundled default model (ancis_fast/assets/default_*.pt) was made, stage by stage:
#
#   bash scripts/train_default.sh WORK_DIR STAGE...      (default: ./train_default all)
#
# base      detector, then mask head on the frozen detector, from scratch (bundled run: this
#           project's 2-core CPU, 78 + 27 min)
# ft-det    fine-tune the detector (base's, else the bundled one) on many more images (bundled run: one H200, 3.8 min,
#           run by scripts/device_check.sh; FT_DEVICE=cpu works, only slower)
# ft-seg    fine-tune the mask head (base's, else the bundled one) on the fine-tuned detector, on data with
#           softer edges labelled nearer half-maximum (bundled run: this CPU, 30 min, 446 steps of batch 4, from
#           base's head)
# real-det  fine-tune the detector (ft-det's, else the bundled one) on the real DSB 2018 images of the train split
#           (REAL_DATA: the DSB 2018 / BBBC038 stage-1 training set, see docs/model.md; crops of the images resized to the 512 frame, 0.75-2x,
#           tissue and bright-field drawn often), a quarter synthetic images mixed in
# real-seg  fine-tune the mask head (ft-seg's, else the bundled one) the same way, on real-det's detector
# real      real-det real-seg; both are bounded by the clock (REAL_DET_MINUTES, REAL_SEG_MINUTES, the cosine
#           schedule anneals by it) and resumable: set REAL_SLICE_MINUTES to end each call after that long with a
#           checkpoint (e.g. a few hours a night on a CPU, or minutes on a GPU with REAL_DEVICE=cuda) and call
#           the stage again until it reports done. REAL_ROUND=N (default 1) is the Nth such run: it starts from
#           round N-1's weights (WORK/det_realN-1, else the bundled ones, which a bundled round leaves behind) with
#           fresh seeds and writes WORK/det_realN + WORK/seg_realN (round 1: det_real, seg_real)
# eval-real score WORK's real-stage model (else the bundled one) on the validation split, per image class
# figures   docs/default_model_<class>.png: one validation image per class, annotation | bundled model
# bundle    write REAL_ROUND's det_real + seg_real (else det_ft/seg_ft, else det/seg) as the bundled fp16 files
# eval      score the bundled model on held-out synthetic images and the bundled real image
# all       base ft-det ft-seg bundle eval
#
# Every stage trains on 256x256 synthetic images with the priors of a 512 input
# (--prior-height 512), so the model runs at the Predictor's default 512 input; nuclei keep
# their pixel size (6-60 px), which matches DSB-like images of 256-1024 px once resized to 512.
# The bundled base run started with 26 detector epochs and was resumed at step 600 with
# --epochs 20 to fit its time slot, so its first 600 steps followed a slightly longer schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-train_default}"
shift || true
STAGES=("${@:-all}")
PY="${PY:-${VENV:-.venv}/bin/python}"
EXTRA="${EXTRA:---threads 2}"
DET_EPOCHS="${DET_EPOCHS:-20}"        # base: x 100 steps of batch 4
SEG_EPOCHS="${SEG_EPOCHS:-4}"         # base: x 100 steps of batch 4
FT_DEVICE="${FT_DEVICE:-cuda}"
FT_DET_MINUTES="${FT_DET_MINUTES:-3.8}"
FT_SEG_MINUTES="${FT_SEG_MINUTES:-30}"
REAL_DATA="${REAL_DATA:-../shared/data/dsb2018}"
REAL_DEVICE="${REAL_DEVICE:-cpu}"
REAL_DET_MINUTES="${REAL_DET_MINUTES:-40}"
REAL_SEG_MINUTES="${REAL_SEG_MINUTES:-15}"
REAL_SLICE=(${REAL_SLICE_MINUTES:+--stop-after "$REAL_SLICE_MINUTES"})
REAL_ROUND="${REAL_ROUND:-1}"
round_dir() { if [ "$2" -le 1 ]; then echo "$1_real"; else echo "$1_real$2"; fi; }  # STAGE ROUND -> folder
DET_REAL=$(round_dir det "$REAL_ROUND")
SEG_REAL=$(round_dir seg "$REAL_ROUND")
COMMON=(--input-size 256 --prior-height 512 --recipe fast --rot90)
# fine-tuning runs are bounded by time: the cosine schedule anneals by the clock
TIMED=(--epochs 1000 --val-every 100000 --quiet)

base() {
  "$PY" -m ancis_fast train-det --data synth:400 --val synth:32 --out "$WORK/det" \
      --epochs "$DET_EPOCHS" --val-every 2 --seed 1 "${COMMON[@]}" $EXTRA
  "$PY" -m ancis_fast train-seg --detector "$WORK/det/detector_best.pt" --gt-boxes --max-boxes 8 \
      --data synth:400 --val synth:16 --out "$WORK/seg" --epochs "$SEG_EPOCHS" --val-every 2 --seed 1 \
      "${COMMON[@]}" $EXTRA
}

# fine-tuning starts from the base stage's output when there is one, else from the bundled model
init() { if [ -f "$WORK/$1" ]; then echo "$WORK/$1"; else echo "ancis_fast/assets/$2"; fi; }
# a real-image round starts where the round before it ended (round 1: where ft-det / ft-seg ended)
real_init() {  # STAGE FILE FIRST_ROUND_FILE BUNDLED_FILE
  if [ "$REAL_ROUND" -le 1 ]; then init "$3" "$4"; else init "$(round_dir "$1" $((REAL_ROUND - 1)))/$2" "$4"; fi
}

ft_det() {  # 2,001 steps of batch 32 in the H200's 3.8 min (bf16 autocast, 9 loader processes)
  "$PY" -m ancis_fast train-det --data synth:3200 --val synth:64 --out "$WORK/det_ft" --batch-size 32 --lr 2e-3 \
      --warmup 300 --workers 9 --threads 4 --device "$FT_DEVICE" --amp --time-limit "$FT_DET_MINUTES" \
      --init "$(init det/detector_best.pt default_detector.pt)" --seed 3 "${COMMON[@]}" "${TIMED[@]}"
}

ft_seg() {  # softer, annotator-like edges (--synth-blur/--synth-edge-floor): see docs/model.md, "Mask edges"
  "$PY" -m ancis_fast train-seg --detector "$(init det_ft/detector_best.pt default_detector.pt)" --gt-boxes \
      --max-boxes 8 --data synth:400 --val synth:16 --out "$WORK/seg_ft" --batch-size 4 --lr 3e-4 --warmup 20 \
      --time-limit "$FT_SEG_MINUTES" --init "$(init seg/segmenter_best.pt default_segmenter.pt)" --seed 6 \
      --synth-blur 0.3,3 --synth-edge-floor 0,0.9 "${COMMON[@]}" "${TIMED[@]}" $EXTRA
}

# real images: the train split's crops at the inference scale (no zoom-out needed), 1 synthetic image in 4
# BatchNorm statistics frozen (REAL_BN=--freeze-bn, the default since the first real-image run, which had REAL_BN=
# and whose drifted statistics cost synthetic recall: docs/model.md)
REAL_BN="${REAL_BN---freeze-bn}"
# REAL_CLASS_WEIGHTS: how often each image class is drawn, e.g. fluorescence=0.4,tissue=0.4,brightfield=0.2
# (default: train.data.CLASS_WEIGHTS, which every bundled round used)
REAL_WEIGHTS=(${REAL_CLASS_WEIGHTS:+--class-weights "$REAL_CLASS_WEIGHTS"})
# REAL_PLACEMENT: share of the real crops placed, smaller, on a median-filled canvas (train --placement; default 0)
REAL_PLACE=(${REAL_PLACEMENT:+--placement "$REAL_PLACEMENT"})
REAL=(--data "$REAL_DATA" synth:160 --split train --max-expand 1 --device "$REAL_DEVICE" --resume "${REAL_SLICE[@]}"
      "${REAL_WEIGHTS[@]}" "${REAL_PLACE[@]}" $REAL_BN)

real_det() {  # box AP on the validation split at the end (mask scores: eval-real)
  "$PY" -m ancis_fast train-det "${REAL[@]}" --val "$REAL_DATA" --val-split val --out "$WORK/$DET_REAL" \
      --batch-size 4 --lr 3e-4 --warmup 20 \
      --time-limit "$REAL_DET_MINUTES" --init "$(real_init det detector.pt det_ft/detector_best.pt default_detector.pt)" \
      --seed $((17 + 2 * (REAL_ROUND - 1))) \
      "${COMMON[@]}" "${TIMED[@]}" $EXTRA
}

real_seg() {  # with ft-seg's softer synthetic edges
  "$PY" -m ancis_fast train-seg "${REAL[@]}" --detector "$(init "$DET_REAL/detector.pt" default_detector.pt)" \
      --gt-boxes --max-boxes 8 --out "$WORK/$SEG_REAL" --batch-size 4 --lr 3e-4 --warmup 20 \
      --time-limit "$REAL_SEG_MINUTES" --init "$(real_init seg segmenter.pt seg_ft/segmenter_best.pt default_segmenter.pt)" \
      --seed $((18 + 2 * (REAL_ROUND - 1))) \
      --synth-blur 0.3,3 --synth-edge-floor 0,0.9 "${COMMON[@]}" "${TIMED[@]}" $EXTRA
}

evaluate_real() {  # eager backend (the batched fast path): on 20 validation images, DSB 0.416 / F1 0.737 against the
                   # reference backend's 0.420 / 0.740 (bundled model), at a fraction of the time
  "$PY" -m ancis_fast evaluate "$REAL_DATA" --split val --backend eager --quiet \
      --weights-det "$(init "$DET_REAL/detector.pt" default_detector.pt)" \
      --weights-seg "$(init "$SEG_REAL/segmenter.pt" default_segmenter.pt)" --json "$WORK/eval_real_round${REAL_ROUND}_val.json"
}

figures() {  # docs/default_model_<class>.png: the first validation image of each class, annotation | bundled model
  "$PY" - "$REAL_DATA" <<'EOF'
import sys
import cv2
import numpy as np
from ancis_fast import Predictor
from ancis_fast.data.classes import IMAGE_CLASSES
from ancis_fast.data.layouts import open_dataset
from ancis_fast.data.split import select_split
from ancis_fast.io.writers import overlay, write_image
from ancis_fast.pipeline.preprocess import to_bgr8
val = select_split(open_dataset(sys.argv[1]), "val")
predictor = Predictor(backend="eager")
for name in IMAGE_CLASSES:
    sample = val[val.classes.index(name)]
    bgr = to_bgr8(sample.image)
    panels = [overlay(bgr, sample.labels), overlay(bgr, predictor.predict(sample.image).label_image())]
    scale = 256 / bgr.shape[0]
    small = [cv2.resize(p, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for p in panels]
    gap = np.full((small[0].shape[0], 4, 3), 255, np.uint8)
    write_image(f"docs/default_model_{name}.png", np.hstack([small[0], gap, small[1]]))
    print(f"docs/default_model_{name}.png: {sample.name}")
EOF
}

bundle() {
  "$PY" - "$WORK" "$DET_REAL" "$SEG_REAL" <<'EOF'
import sys
from pathlib import Path
from ancis_fast.models.weights import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from ancis_fast.train.checkpoint import export_half
work, real = Path(sys.argv[1]), {"det": sys.argv[2], "seg": sys.argv[3]}
for stage, target in (("det", DEFAULT_DETECTOR), ("seg", DEFAULT_SEGMENTER)):
    name = "detector" if stage == "det" else "segmenter"
    candidates = (work / real[stage] / f"{name}.pt", work / f"{stage}_ft/{name}_best.pt", work / f"{stage}/{name}_best.pt")
    source = next(p for p in candidates if p.is_file())
    export_half(source, target)
    print(f"bundled {source} as {target}")
EOF
}

evaluate() {
  # held-out synthetic test set at the Predictor's default size (a seed no training run uses)
  "$PY" -m ancis_fast synth --out "$WORK/test512" --n 60 --size 512 --seed 2026 --layout labels --quiet
  "$PY" -m ancis_fast evaluate "$WORK/test512" --backend reference --json "$WORK/eval_synthetic.json" --quiet
  mkdir -p "$WORK/real/images" "$WORK/real/masks"
  cp ancis_fast/assets/dsb2018_nuclei.png "$WORK/real/images/"
  cp ancis_fast/assets/dsb2018_nuclei_labels.png "$WORK/real/masks/"
  "$PY" -m ancis_fast evaluate "$WORK/real" --backend reference --json "$WORK/eval_real.json" --quiet
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    base) base ;;
    ft-det) ft_det ;;
    ft-seg) ft_seg ;;
    real-det) real_det ;;
    real-seg) real_seg ;;
    real) real_det; real_seg ;;
    eval-real) evaluate_real ;;
    figures) figures ;;
    bundle) bundle ;;
    eval) evaluate ;;
    all) base; ft_det; ft_seg; bundle; evaluate ;;
    *) echo "unknown stage $stage (base, ft-det, ft-seg, real-det, real-seg, real, eval-real, figures, bundle, eval, all)" >&2
       exit 2 ;;
  esac
done
