"""Which weight axes share one permutation of hidden units, derived from the traced network.

Git Re-Basin permutes the hidden units of a network without changing its function. Each
permutation group is a set of units that must move together: a layer's output units, every axis
that reads them (the next layer's inputs, BatchNorm weight, bias and running statistics), and,
through a residual addition, the units of both summands. Hand-written specs got residual networks
wrong in peer ports, so here the groups are found by following the data through the fx graph:

- a Linear/Conv layer starts a group for its output units; its input axis takes the layout of
  whatever feeds it (after a flatten, each channel is a block of consecutive features);
- BatchNorm, activations and pooling pass the layout through; concatenation stacks layouts;
- an elementwise sum (residual) joins the groups of both summands into one;
- anything else, and the network's inputs and outputs, pins the units it touches (identity).

Pinning is always safe, so an operation this module does not know costs alignment quality on
the units it touches, never correctness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from lmctrack.engine.align.trace import (
    CHANNELWISE_FUNCTIONS,
    CHANNELWISE_METHODS,
    CHANNELWISE_MODULES,
    ELEMENTWISE,
    LAYERS,
    NORMS,
    REDUCTION_FUNCTIONS,
    REDUCTION_METHODS,
    RESHAPE_FUNCTIONS,
    RESHAPE_METHODS,
    SHAPE_METHODS,
    SHAPE_READS,
    is_nonlinear,
    module_of,
    propagate_shapes,
    trace,
)
from lmctrack.errors import LmcError

FIXED = 0  # the group of units that are never permuted (inputs, outputs, unknown operations)


@dataclass(frozen=True)
class Segment:
    """`size` units of group `group` at [start, start + size * repeat) of an axis, each a block of
    `repeat` consecutive entries (repeat > 1 where a feature map was flattened)."""

    group: int
    start: int
    size: int
    repeat: int = 1


Layout = tuple[Segment, ...]  # how the channel axis (dim 1) of a tensor splits into groups


@dataclass(frozen=True)
class AxisSlice:
    """A stretch of one state_dict tensor's axis that a group permutes."""

    tensor: str
    axis: int
    start: int
    repeat: int
    matched: bool  # weight matching compares it (BatchNorm running statistics only move)


@dataclass(frozen=True)
class Site:
    """A traced node whose output holds a group's units: where activations are read."""

    node: str
    start: int
    repeat: int


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of one architecture (on one input shape).

    sizes: group name (the layer that first produces its units) -> number of units.
    slices: group -> every tensor axis stretch it permutes.
    sites: group -> the nodes whose outputs are its hidden activations.
    shapes: every state_dict tensor's shape, to check that weights come from this architecture.
    """

    sizes: dict[str, int]
    slices: dict[str, tuple[AxisSlice, ...]]
    sites: dict[str, tuple[Site, ...]]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)

    @cached_property
    def axes(self) -> dict[str, dict[int, list[tuple[str, int, int]]]]:
        """tensor -> axis -> [(group, start, repeat)]: what to permute in each tensor."""
        out: dict[str, dict[int, list[tuple[str, int, int]]]] = {}
        for group, slices in self.slices.items():
            for s in slices:
                out.setdefault(s.tensor, {}).setdefault(s.axis, []).append(
                    (group, s.start, s.repeat)
                )
        return out

    def check(self, weights: dict[str, torch.Tensor], side: str) -> None:
        """Raise LmcError unless `weights` is a state_dict of this architecture."""
        names, expected = set(weights), set(self.shapes)
        if names != expected:
            extra = sorted(names - expected)[:3] or sorted(expected - names)[:3]
            raise LmcError(
                f"{side} is not a state of this architecture (tensors {', '.join(extra)} differ); "
                "align states of the same model"
            )
        for name, shape in self.shapes.items():
            if tuple(weights[name].shape) != shape:
                raise LmcError(
                    f"{side} is not a state of this architecture ('{name}' has shape "
                    f"{tuple(weights[name].shape)}, expected {shape}); align states of the same model"
                )


class _Groups:
    """Union-find over permutation groups; the smallest id is the root, so FIXED absorbs."""

    def __init__(self) -> None:
        self.parent, self.sizes, self.names = [FIXED], [0], ["<fixed>"]

    def new(self, size: int, name: str) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(size)
        self.names.append(name)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        self.parent[max(ra, rb)] = min(ra, rb)

    def pin(self, layout: Layout | None) -> None:
        for seg in layout or ():
            self.union(seg.group, FIXED)

    def join(self, a: Layout | None, b: Layout | None) -> None:
        """Tie two layouts unit by unit (a sum of tensors); pin both where they do not line up."""
        shape = [(s.start, s.size, s.repeat) for s in a or ()]
        if a is None or b is None or shape != [(s.start, s.size, s.repeat) for s in b]:
            self.pin(a)
            self.pin(b)
            return
        for sa, sb in zip(a, b, strict=True):
            self.union(sa.group, sb.group)


def _fixed(shape: tuple[int, ...] | None) -> Layout | None:
    if shape is None or len(shape) < 2:
        return None
    return (Segment(FIXED, 0, shape[1]),)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


class _Derivation:
    """One walk over the graph in execution order, giving each tensor node its layout."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.groups = _Groups()
        self.layouts: dict[fx.Node, Layout | None] = {}
        self.axes: list[tuple[str, int, Layout, bool]] = []
        self.module_inputs: dict[str, Layout | None] = {}
        self.module_outputs: dict[str, Layout | None] = {}
        for node in gm.graph.nodes:
            self.layouts[node] = self._visit(node)

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if _shape(n) is not None]

    def _pin_inputs(self, node: fx.Node) -> None:
        for n in node.all_input_nodes:
            self.groups.pin(self.layouts.get(n))

    def _visit(self, node: fx.Node) -> Layout | None:
        shape = _shape(node)
        if node.op == "output":
            self._pin_inputs(node)
            return None
        if node.op in ("placeholder", "get_attr"):
            return _fixed(shape)
        if shape is None:  # a non-tensor result: harmless only if it reads a shape
            if not (node.target in SHAPE_READS or node.target in SHAPE_METHODS):
                self._pin_inputs(node)
            return None
        module = module_of(self.gm, node)
        target = node.target
        if isinstance(module, (*LAYERS, *NORMS)):
            return self._module(node, module)
        if (
            isinstance(module, CHANNELWISE_MODULES)
            or (node.op == "call_function" and target in CHANNELWISE_FUNCTIONS)
            or (node.op == "call_method" and target in CHANNELWISE_METHODS)
        ):
            return self._channelwise(node, shape)
        if (
            isinstance(module, nn.Flatten)
            or (node.op == "call_function" and target in RESHAPE_FUNCTIONS)
            or (node.op == "call_method" and target in RESHAPE_METHODS)
        ):
            return self._reshape(node, shape)
        if (node.op == "call_function" and target in REDUCTION_FUNCTIONS) or (
            node.op == "call_method" and target in REDUCTION_METHODS
        ):
            return self._spatial_reduction(node, shape)
        if node.op == "call_function" and target in ELEMENTWISE:
            return self._elementwise(node, shape)
        if node.op == "call_function" and target is torch.cat:
            return self._cat(node, shape)
        self._pin_inputs(node)
        return _fixed(shape)

    def _channelwise(self, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
        inputs = self._inputs(node)
        source = inputs[0] if len(inputs) == 1 else None
        if source is None or len(shape) < 2 or _shape(source)[1] != shape[1]:
            self._pin_inputs(node)
            return _fixed(shape)
        return self.layouts[source]

    def _spatial_reduction(self, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
        """A reduction over dims >= 2 (global pooling) keeps the channels; any other pins."""
        source = node.all_input_nodes[0]
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else dims
        before = _shape(source)
        if dims is None or before is None or len(before) < 3:
            self._pin_inputs(node)
            return _fixed(shape)
        reduced = {d % len(before) for d in dims}
        if 0 in reduced or 1 in reduced or len(shape) < 2 or shape[1] != before[1]:
            self._pin_inputs(node)
            return _fixed(shape)
        return self.layouts[source]

    def _reshape(self, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
        source = node.all_input_nodes[0]
        before, layout = _shape(source), self.layouts[source]
        if before == shape:
            return layout
        if layout is not None and len(before) >= 3 and shape == (before[0], math.prod(before[1:])):
            spatial = math.prod(before[2:])  # flatten: channel c becomes features c*S .. c*S+S-1
            return tuple(Segment(s.group, s.start * spatial, s.size, spatial) for s in layout)
        self.groups.pin(layout)
        return _fixed(shape)

    def _elementwise(self, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
        tensors = self._inputs(node)
        scalars_only = all(isinstance(a, int | float) for a in node.args if a not in tensors)
        if len(tensors) == 1 and scalars_only and _shape(tensors[0]) == shape:
            return self.layouts[tensors[0]]
        if len(tensors) == 2 and all(_shape(t) == shape for t in tensors):
            self.groups.join(self.layouts[tensors[0]], self.layouts[tensors[1]])
            return self.layouts[tensors[0]]
        self._pin_inputs(node)
        return _fixed(shape)

    def _cat(self, node: fx.Node, shape: tuple[int, ...]) -> Layout | None:
        parts = list(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % len(shape) != 1:  # stacked along batch or space: the parts share their units
            for part in parts[1:]:
                self.groups.join(self.layouts[parts[0]], self.layouts[part])
            return self.layouts[parts[0]]
        out, offset = [], 0
        for part in parts:
            for s in self.layouts[part] or (Segment(FIXED, 0, _shape(part)[1]),):
                out.append(Segment(s.group, s.start + offset, s.size, s.repeat))
            offset += _shape(part)[1]
        return tuple(out)

    def _module(self, node: fx.Node, module: nn.Module) -> Layout | None:
        """A Linear/Conv/BatchNorm call; a module called twice keeps one group."""
        source = node.all_input_nodes[0]
        layout, name = self.layouts[source], node.target
        if name in self.module_inputs:
            self.groups.join(self.module_inputs[name], layout)
            return self.module_outputs[name]
        self.module_inputs[name] = layout
        self.module_outputs[name] = out = self._parameters(name, module, layout, _shape(source))
        return out

    def _parameters(
        self, name: str, module: nn.Module, layout: Layout | None, before: tuple[int, ...]
    ) -> Layout | None:
        if isinstance(module, NORMS):
            if layout is None:
                return None
            for tensor, matched in (
                ("weight", True),
                ("bias", True),
                ("running_mean", False),
                ("running_var", False),
            ):
                if getattr(module, tensor, None) is not None:
                    self.axes.append((f"{name}.{tensor}", 0, layout, matched))
            return layout
        flat_input = isinstance(module, nn.Linear) and len(before) == 2
        if not (flat_input or getattr(module, "groups", 0) == 1) or layout is None:
            self.groups.pin(layout)  # grouped convs, or Linear on sequences: left alone
            return None
        units = module.weight.shape[0]
        out = (Segment(self.groups.new(units, name), 0, units),)
        self.axes.append((f"{name}.weight", 0, out, True))
        if module.bias is not None:
            self.axes.append((f"{name}.bias", 0, out, True))
        self.axes.append((f"{name}.weight", 1, layout, True))
        return out

    def spec(self, shapes: dict[str, tuple[int, ...]]) -> PermutationSpec:
        groups = self.groups
        names = {}
        for g in range(1, len(groups.parent)):
            root = groups.find(g)
            if root != FIXED:
                names[g] = groups.names[root]
        slices: dict[str, list[AxisSlice]] = {}
        for tensor, axis, layout, matched in self.axes:
            for s in layout:
                if s.group in names:
                    slices.setdefault(names[s.group], []).append(
                        AxisSlice(tensor, axis, s.start, s.repeat, matched)
                    )
        sizes = {names[g]: groups.sizes[g] for g in names}
        return PermutationSpec(
            sizes={group: sizes[group] for group in slices},
            slices={group: tuple(found) for group, found in slices.items()},
            sites=self._sites(names, slices),
            shapes=shapes,
        )

    def _sites(self, names: dict[int, str], groups: dict) -> dict[str, tuple[Site, ...]]:
        """Each group's nonlinearity outputs; its layers' outputs where it has none."""
        every: dict[str, list[Site]] = {g: [] for g in groups}
        nonlinear: dict[str, list[Site]] = {g: [] for g in groups}
        for node, layout in self.layouts.items():
            if node.op in ("placeholder", "output") or layout is None:
                continue
            for s in layout:
                if s.group in names:
                    site = Site(node.name, s.start, s.repeat)
                    every[names[s.group]].append(site)
                    if is_nonlinear(self.gm, node):
                        nonlinear[names[s.group]].append(site)
        return {g: tuple(nonlinear[g] or every[g]) for g in groups}


def permutation_spec(model: nn.Module, inputs: tuple[int, ...] | torch.Tensor) -> PermutationSpec:
    """The permutation groups of `model` on a real batch of its inputs (Dataset.example(): integer
    tokens stay integers), or on float zeros of an input shape (without the batch).

    The input shape matters where a feature map is flattened into a linear layer: each channel
    then owns a block of length prod(spatial) of that layer's inputs.
    """
    gm = trace(model)
    tensor = next(iter(model.state_dict().values()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    example = inputs if isinstance(inputs, torch.Tensor) else torch.zeros(2, *inputs)
    propagate_shapes(gm, example.to(device))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    spec = _Derivation(gm).spec(shapes)
    if not spec.sizes:
        raise LmcError(
            f"{type(model).__name__} has no hidden units to permute (every layer's units are "
            "fixed by the input or the output), so alignment does not apply to it; the other "
            "analyses do"
        )
    return spec
