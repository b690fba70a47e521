"""SGD with momentum, computing exactly what torch.optim.SGD computes (its single-tensor path).

Why not torch.optim.SGD: every torch.optim optimizer imports torch._dynamo when it is built and
when it steps, several seconds of CPU in each process that trains (each command, each Ray
worker); on the embedded default that is a noticeable share of a stage. This one keeps the same
state layout (`state_dict()["state"][i]["momentum_buffer"]`), so checkpoints are interchangeable,
and tests/test_train.py checks it against torch.optim.SGD bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class SGD:
    """lr, momentum (dampening 0), Nesterov and L2 weight decay, as torch.optim.SGD."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        group = {"lr": lr, "momentum": momentum, "nesterov": nesterov}
        self.param_groups = [{"params": list(params), "weight_decay": weight_decay, **group}]
        self.state: dict[nn.Parameter, dict[str, torch.Tensor]] = {}

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            momentum, decay = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
                if momentum != 0:
                    buf = self.state.setdefault(p, {}).get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(momentum).add_(d_p)
                    d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d_p, alpha=-group["lr"])

    def state_dict(self) -> dict:
        """torch.optim's layout: per-parameter state by the parameter's index."""
        index = {p: i for i, p in enumerate(self._params())}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"state": {index[p]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state: dict) -> None:
        params = self._params()
        self.state = {
            params[int(i)]: {k: v.to(params[int(i)].device) for k, v in slots.items()}
            for i, slots in state["state"].items()
        }
