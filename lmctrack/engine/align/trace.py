"""A network as a graph of operations (torch.fx), the one view alignment and REPAIR both read.

Deriving which weights share a hidden unit, or where a network's pre-activations are, needs the
data flow of `forward`, not the module tree: residual additions, flattening and concatenation
only show in the graph. Networks whose forward branches on data cannot be traced; they get a clear
error instead of a silently wrong answer.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from lmctrack.errors import LmcError

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Nonlinearities: their outputs are the hidden activations that activation matching compares.
NONLINEAR_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
)
NONLINEAR_FUNCTIONS = frozenset(
    {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh}
)
NONLINEAR_METHODS = frozenset({"relu", "relu_", "sigmoid", "tanh"})
# Operations that act on every channel alike, so a permutation of channels passes through them.
CHANNELWISE_MODULES = (
    *NONLINEAR_MODULES,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
CHANNELWISE_FUNCTIONS = NONLINEAR_FUNCTIONS | {
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
}
CHANNELWISE_METHODS = NONLINEAR_METHODS | {"contiguous", "clone"}
# Reductions over spatial dims (e.g. global average pooling as x.mean((2, 3))) keep each
# channel's units where they are, as long as dim 1 (the channels) is not reduced.
REDUCTION_METHODS = frozenset({"mean", "sum", "amax", "amin"})
REDUCTION_FUNCTIONS = frozenset({torch.mean, torch.sum, torch.amax, torch.amin})
ELEMENTWISE = frozenset(
    {
        operator.add,
        operator.iadd,
        operator.sub,
        operator.mul,
        operator.truediv,
        torch.add,
        torch.sub,
        torch.mul,
    }
)
RESHAPE_FUNCTIONS = frozenset({torch.flatten, torch.reshape})
RESHAPE_METHODS = frozenset({"flatten", "view", "reshape"})
# Reading a tensor's shape neither changes nor depends on the order of its channels.
SHAPE_READS = frozenset({getattr, len})
SHAPE_METHODS = frozenset({"size", "dim"})


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's forward as an fx graph; its layers are the model's own module objects."""
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmcError(
            f"cannot trace {type(model).__name__} with torch.fx ({first}); alignment and REPAIR "
            "need a forward without data-dependent Python control flow (the other analyses do not)"
        ) from None


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record every node's output shape in node.meta["tensor_meta"] (eval mode, no gradients)."""
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        gm.train(was_training)


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_nonlinear(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether node applies an activation function (its output is a hidden activation)."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), NONLINEAR_MODULES)
    if node.op == "call_function":
        return node.target in NONLINEAR_FUNCTIONS
    return node.op == "call_method" and node.target in NONLINEAR_METHODS


def probe(gm: fx.GraphModule, nodes: Sequence[str]) -> fx.GraphModule:
    """A module sharing gm's layers whose forward returns the outputs of `nodes` (by name)."""
    graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(gm.graph, copies)
    by_name = {n.name: copies[n] for n in gm.graph.nodes if n.op != "output"}
    graph.output(tuple(by_name[name] for name in nodes))
    probed = fx.GraphModule(gm, graph)
    probed.graph.eliminate_dead_code()
    probed.recompile()
    return probed


def as_inputs(batches: Iterable) -> list[torch.Tensor]:
    """The inputs of a stream of (x, y) batches (or of bare x tensors), kept for several passes."""
    inputs = [b[0] if isinstance(b, tuple | list) else b for b in batches]
    if not inputs:
        raise LmcError(
            "no data batches were given; pass training batches, e.g. "
            "dataset.eval_batches('train', limit=5000)"
        )
    return inputs


def channel_rows(z: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N * prod(spatial), C): every position a sample of each channel."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])
