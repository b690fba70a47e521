"""lmctrack: linear mode connectivity and the lottery ticket hypothesis, tracked and reproducible.

    import lmctrack as lmc
    net, info = lmc.load("models:/mnist1d_cnn_bn_mnist1d/3")

The Python API (lmctrack.api) is imported on first use, so the command line starts without torch.
Three API names are also engine modules (`lmctrack.train`, `lmctrack.interpolate`,
`lmctrack.align`): on the package they mean the API function; import the modules' contents with
`from lmctrack.train import ...`.
"""

import sys
import types

__version__ = "0.1.0"

API = (
    "train",
    "fork",
    "forks",
    "interpolate",
    "imp",
    "instability",
    "find_k",
    "align",
    "load",
    "states",
    "lineage",
)


def _api_name(name: str) -> property:
    def get(_package: types.ModuleType):
        from lmctrack import api

        return getattr(api, name)

    def keep_submodule(package: types.ModuleType, module: types.ModuleType) -> None:
        # The import system records a loaded submodule on its package; keep it aside so that the
        # API function stays what `lmctrack.<name>` means.
        package.__dict__.setdefault("_submodules", {})[name] = module

    return property(get, keep_submodule)


class _Package(types.ModuleType):
    """The lmctrack package, whose API names resolve to the API functions."""


for _name in API:
    setattr(_Package, _name, _api_name(_name))
sys.modules[__name__].__class__ = _Package
