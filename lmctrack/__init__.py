"""lmctrack: linear mode connectivity and the lottery ticket hypothesis, tracked and reproducible.

    import lmctrack as lmc
    net, info = lmc.load("models:/mnist1d_cnn_mnist1d/3")

The API (lmctrack.api) is imported on first use, so the command line starts without torch.
"""

__version__ = "0.1.0"

API = ("train", "fork", "interpolate", "imp", "instability", "align", "load", "states", "lineage")


def __getattr__(name: str):
    if name in API:
        from lmctrack import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmctrack' has no attribute '{name}'")
