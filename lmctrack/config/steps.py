"""The Step type of the reference implementation: a point in training written '2000it', '160ep'
or '120ep50it', so that schedules read as in the paper whatever the dataset's size."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

_STEP_RE = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


class Step(BaseModel):
    """A point in training: `ep` epochs plus `it` iterations (iterations per epoch = ceil(N/batch))."""

    model_config = ConfigDict(frozen=True)
    ep: int = 0
    it: int = 0

    @classmethod
    def parse(cls, value: Any) -> Step:
        if isinstance(value, Step):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(it=value)
        if isinstance(value, dict):
            return cls(**value)
        text = str(value).strip()
        match = _STEP_RE.match(text)
        if not text or match is None:
            raise ValueError(f"'{value}' is not a step: write '2000it', '160ep' or '120ep50it'")
        return cls(ep=int(match.group(1) or 0), it=int(match.group(2) or 0))

    def iterations(self, iterations_per_epoch: int) -> int:
        """This step as an iteration count."""
        return self.ep * iterations_per_epoch + self.it

    def __str__(self) -> str:
        if self.ep and self.it:
            return f"{self.ep}ep{self.it}it"
        return f"{self.ep}ep" if self.ep else f"{self.it}it"


StepField = Annotated[Step, BeforeValidator(Step.parse), PlainSerializer(str, return_type=str)]


def iterations_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)
