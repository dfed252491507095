#!/usr/bin/env bash
# The main job on a fresh machine: install, pretrain BYOL on Fashion-MNIST with the CPU quick
# preset (under 10 minutes on 2 cores), then score it with weighted kNN (k=20) next to the same
# network at its random initialisation. Extra arguments go to `byol pretrain`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
RUN=${RUN:-runs/fmnist_quick}
byol pretrain --config fmnist_quick --out "$RUN" "$@"
mkdir -p "$RUN/eval"
byol eval knn --checkpoint "$RUN/last.pt" --json "$RUN/eval/knn_byol.json" --quiet
byol eval knn --checkpoint "$RUN/last.pt" --baseline random --json "$RUN/eval/knn_random.json" --quiet
python3 - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
def top1(name, k="k=20"):
    return json.load(open(f"{run}/eval/{name}.json"))["results"][k]["top1"]
b, r = top1("knn_byol"), top1("knn_random")
print(f"\nFashion-MNIST test kNN top-1 (k=20): BYOL {b:.2f}%  vs  same network at random init {r:.2f}%"
      f"  ({b - r:+.2f} points)")
PY
