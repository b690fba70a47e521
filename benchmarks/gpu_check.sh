#!/usr/bin/env bash
# The GPU check: one table, under 8 minutes on one modern GPU.
#   CUDA training of the Table-1 CIFAR networks (cifar_resnet_20, cifar_vgg_16) on CIFAR-shaped
#   synthetic data held in memory; determinism (same seeds -> same weights, deterministic
#   algorithms on); ResNet-20 iterations/s: bare PyTorch loop, lmctrack engine, 8 copies stacked,
#   8 copies in processes sharing the GPU; interpolation alphas/s stacked vs per-alpha; peak memory.
# Usage: bash benchmarks/gpu_check.sh            (needs a CUDA GPU; exits 2 without one)
#        bash benchmarks/gpu_check.sh --cpu-smoke (tiny sizes on the CPU: tests this script)
set -euo pipefail
cd "$(dirname "$0")/.."
export CUBLAS_WORKSPACE_CONFIG=:4096:8
exec python - "$@" <<'PY'
import dataclasses, sys, time
import torch
import torch.nn.functional as F
from lmctrack.config.params import ModelConfig, load_params
from lmctrack.engine.data import Split, TensorDataset
from lmctrack.engine.interpolate import linear_path
from lmctrack.engine.models import build_model
from lmctrack.execution.progress import Board
from lmctrack.execution.local import TrainJob, run_jobs
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise, deterministic, train

smoke = "--cpu-smoke" in sys.argv
if not smoke and not torch.cuda.is_available():
    print("gpu_check: no CUDA GPU is visible; run it where one is, or pass --cpu-smoke")
    sys.exit(2)
device = torch.device("cpu" if smoke else "cuda")
deterministic(device)
torch.set_num_threads(1 if smoke else 4)
n_train, steps, side = (64, 3, 16) if smoke else (10000, 200, 32)
g = torch.Generator().manual_seed(0)
data = TensorDataset(
    "cifar_synthetic",
    Split(torch.randn(n_train, 3, side, side, generator=g), torch.randint(0, 10, (n_train,), generator=g)),
    Split(torch.randn(n_train // 5, 3, side, side, generator=g), torch.randint(0, 10, (n_train // 5,), generator=g)),
    10,
    augment=True,
).to(device)
cfg = load_params(None, ["train.batch_size=16" if smoke else "train.batch_size=128", f"train.steps={steps}it"]).train
rows = []


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb():
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")


def reset_peak():
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def engine(name, seed=0):
    model = build_model(ModelConfig(name=name), 10, data.input_shape, 0)
    sync(); began = time.perf_counter()
    train(model, data, cfg, start=0, stop=steps, noise=Noise(seed, seed), device=device)
    sync()
    return model, steps / (time.perf_counter() - began)


for name in ("cifar_resnet_20", "cifar_vgg_16"):
    reset_peak()
    a, speed = engine(name)
    b, _ = engine(name)
    same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    rows.append((f"{name}: engine it/s, same weights twice", f"{speed:.1f} it/s, {'yes' if same else 'NO'}", f"{peak_mb():.0f} MB"))

# ResNet-20: bare loop vs engine vs 8 copies stacked vs 8 copies in processes
model = build_model(ModelConfig(name="cifar_resnet_20"), 10, data.input_shape, 0).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
batches = data.train_batches(cfg.batch_size, 0, 0, device=device)
reset_peak(); sync(); began = time.perf_counter()
for _ in range(steps):
    x, y = next(batches)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
sync()
rows.append(("resnet_20: bare loop", f"{steps / (time.perf_counter() - began):.1f} it/s", f"{peak_mb():.0f} MB"))
rows.append(("resnet_20: lmctrack engine", f"{engine('cifar_resnet_20')[1]:.1f} it/s", ""))
copies = 2 if smoke else 8
jobs = [
    TrainJob(key=f"c{s}", label=f"c{s}", model=ModelConfig(name="cifar_resnet_20"), train=cfg, noise=Noise(s, s), start=0, stop=steps)
    for s in range(copies)
]
for mode, kw in (("stacked", {"batch_copies": "on"}), ("processes", {"workers": copies})):
    reset_peak(); sync(); began = time.perf_counter()
    run_jobs(jobs, data, device, Board(None), **kw)
    sync()
    rate = copies * steps / (time.perf_counter() - began)
    rows.append((f"resnet_20: {copies} copies {mode}", f"{rate:.1f} copy-it/s (incl. start-up)", f"{peak_mb():.0f} MB (this process)"))

# interpolation throughput
a, b = (State(build_model(ModelConfig(name="cifar_resnet_20"), 10, data.input_shape, s).state_dict()) for s in (0, 1))
alphas = 4 if smoke else 30
for batched in (False, True):
    template = build_model(ModelConfig(name="cifar_resnet_20"), 10, data.input_shape, 0)
    reset_peak(); sync(); began = time.perf_counter()
    linear_path(template, a, b, data, alphas=alphas, splits=("test",), bn="reset", device=device, batched=batched)
    sync()
    label = "stacked" if batched else "per-alpha"
    rows.append((f"interpolation resnet_20 ({label}, bn=reset)", f"{alphas / (time.perf_counter() - began):.2f} alphas/s", f"{peak_mb():.0f} MB"))

width = max(len(r[0]) for r in rows)
print(f"gpu_check on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (smoke)'}, torch {torch.__version__}")
print(f"{'check':<{width}} | result | peak memory")
for what, result, memory in rows:
    print(f"{what:<{width}} | {result} | {memory}")
PY
