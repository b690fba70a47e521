"""lmctrack: linear mode connectivity and the lottery ticket hypothesis, tracked and reproducible.

    import lmctrack as lmc
    net, info = lmc.load("models:/mnist1d_cnn_bn_mnist1d/3")

The Python API (lmctrack.api) is imported on first use, so the command line starts without torch.
The layers, each a package, from the bottom: config (params, names, verdict rules), engine (pure
PyTorch), execution / results / store (where trainings run, typed results, MLflow), workflows
(the paper's procedures), api, cli.
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    api = importlib.import_module("lmctrack.api")  # light: its procedures load on first use
    if name == "api" or name in api.__all__:
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'lmctrack' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("lmctrack.api").__all__])
