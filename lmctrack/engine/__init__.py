"""The engine: the paper's objects in pure PyTorch, with no MLflow and no knowledge of runs.

data (seeded batches, augmentation), models (the registry, import paths), train and sgd (one
training loop, the recipe), batched (stacked copies), state (W with its mask, safetensors),
prune (masks, criteria), interpolate (paths, barriers, BatchNorm policy), evaluate, compare
(Appendices B and G), repair, align (permutations), distill, hessian, landscape, earliest (the
search for the earliest stable k).
"""
