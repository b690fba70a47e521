"""A researcher's analysis through the Python API, as it would run in a notebook.

    python examples/instability_notebook.py [params.yaml] [figures folder]

Train (or reuse) the network, measure the instability of W0 and of a later Wk, look at the
copies of the stable one, and find the states again by their tags.
"""

import sys
from pathlib import Path

import lmctrack as lmc

params = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
figures = Path(sys.argv[2] if len(sys.argv) > 2 else "outputs/notebook")
figures.mkdir(parents=True, exist_ok=True)

run = lmc.train(params)  # W0, every Wk and W_T, registered (reused when already trained)
k = max(step for step in run.states if step not in (0, run.total))
for step in (0, k):
    fork = lmc.fork(run.at(step), seeds=2, params=params)  # Algorithm 1
    barrier = fork.barrier("test")
    print(f"k={step}: test error barrier {barrier.mean:.2%} over {barrier.n} pair(s)")
    print(fork.to_frame()[["seeds", "test.error_barrier", "distance.l2"]])
    fork.plot().savefig(figures / f"fork_k{step}.png")

network, info = lmc.load(fork.copies[0], params=params)  # an nn.Module, mask applied
print(f"{sum(p.numel() for p in network.parameters())} parameters; ", end="")
print(f"{info.uri}: role={info.tags['role']} step={info.tags['step']} parents={info.parents}")

copies = lmc.states(role="trained", rewind_step=k, params=params)
print(f"{len(copies)} trained copies of W{k} registered")
node, chain = lmc.lineage(fork.copies[0], params=params), []
while node is not None:  # W_T <- Wk <- ... <- W0
    chain.append(f"{node.info.tags.get('state')} {node.info.uri}")
    node = node.parents[0] if node.parents else None
print("lineage:", " <- ".join(chain))
