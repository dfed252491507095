#!/usr/bin/env bash
# The main job on a fresh machine: install, pretrain BYOL on Fashion-MNIST with the CPU quick
# preset (a fixed wall-clock budget: the schedule ends when it is spent, on any CPU), then score
# it with weighted kNN (k=20) next to the same network at its random initialisation and raw
# pixels. Writes RUN/eval/quickstart.json. Extra arguments go to `byol pretrain`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
RUN=${RUN:-runs/fmnist_quick}
START=$(date +%s.%N)
byol pretrain --config fmnist_quick --out "$RUN" "$@"
mkdir -p "$RUN/eval"
byol eval knn --checkpoint "$RUN/last.pt" --ks 20 --json "$RUN/eval/knn_byol.json" --quiet
# --baseline random next to a checkpoint is that run's network before training (its train.seed)
byol eval knn --checkpoint "$RUN/last.pt" --baseline random --ks 20 \
  --json "$RUN/eval/knn_random.json" --quiet
byol eval knn --checkpoint "$RUN/last.pt" --baseline pixels --ks 20 \
  --json "$RUN/eval/knn_pixels.json" --quiet
END=$(date +%s.%N)
python3 - "$RUN" "$START" "$END" <<'PY'
import json, sys
run, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def top1(name):
    return round(json.load(open(f"{run}/eval/{name}.json"))["results"]["k=20"]["top1"], 2)
train = json.load(open(f"{run}/train_result.json"))
out = {"byol": top1("knn_byol"), "random": top1("knn_random"), "pixels": top1("knn_pixels"),
       "pretrain_seconds": round(train["wall_s"], 1), "total_seconds": round(end - start, 1),
       "steps": train["steps"]}
json.dump(out, open(f"{run}/eval/quickstart.json", "w"), indent=1)
b, r, p = out["byol"], out["random"], out["pixels"]
print(f"\nFashion-MNIST test kNN top-1 (k=20):  BYOL {b:.2f}%  |  same network at random init "
      f"{r:.2f}%  |  raw pixels {p:.2f}%")
print(f"BYOL vs random init {b - r:+.2f} points, vs raw pixels {b - p:+.2f} points; pretraining "
      f"{out['pretrain_seconds']:.0f} s, whole job {out['total_seconds']:.0f} s "
      f"({run}/eval/quickstart.json)")
PY
