#!/usr/bin/env bash
# Makes tests/stores/release-0.1.tar.gz: a store written by an installed lmctrack release through
# its CLI alone (train, fork, IMP), for tests/test_release_store.py, which reads it with the code
# of today. Run it from the repository root with the release installed; it writes the store under
# /tmp/lmctrack-release-store, a path the test rewrites to wherever it unpacks the store.
set -euo pipefail
out="$PWD/tests/stores/release-0.1.tar.gz"
root=/tmp/lmctrack-release-store
rm -rf "$root" && mkdir -p "$root" && cd "$root"
cat > params.yaml <<'YAML'
data: {name: mnist1d, num_samples: 1000, root: data}
model: {name: mnist1d_cnn_bn, width: 4}
train: {lr: 0.1, momentum: 0.9, batch_size: 100, steps: 40it, rewind_steps: [0it, 10it], device: cpu}
instability: {rewind_steps: [0it, 10it], inits: 1, copies: 2, alphas: 3, splits: [test]}
imp: {rewind: 10it, levels: 1, replicates: 1, baseline_levels: []}
store: {tracking_uri: "sqlite:////tmp/lmctrack-release-store/.lmctrack/mlflow.db"}
YAML
lmctrack train -q --out out/train
lmctrack fork -q --run-id out/train/train.json --step 10it --seeds 2 --out out/fork
lmctrack imp -q --run-id out/train/train.json --out out/imp
python - <<'PY'
import json

import mlflow
import torch

# What the release's pyfunc predicts for every state, on a fixed input: the test compares.
mlflow.set_tracking_uri("sqlite:////tmp/lmctrack-release-store/.lmctrack/mlflow.db")
client = mlflow.MlflowClient()
x = torch.linspace(-1, 1, 2 * 40).reshape(2, 40).numpy()
versions = client.search_model_versions(max_results=1000)
predictions = {
    f"models:/{v.name}/{v.version}": mlflow.pyfunc.load_model(
        f"models:/{v.name}/{v.version}"
    ).predict(x).tolist()
    for v in versions
}
json.dump({"input": x.tolist(), "predictions": predictions}, open("out/predictions.json", "w"))
PY
rm -rf data
tar -czf "$out" params.yaml .lmctrack out
echo "$out: $(du -h "$out" | cut -f1)"
