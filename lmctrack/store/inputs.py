"""A dataset as a run records it among its inputs (the UI's dataset column).

What a person reading the run needs: a name that says what the data is (a distilled set by the
run that made it, a file by its stem, a built-in dataset by its name), the digest that identifies
its content, and a source they can follow: the file's path and the run that produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class DataRef:
    name: str
    fingerprint: str  # the content digest (lmctrack.engine.data.dataset_fingerprint)
    source: str = ""  # JSON: where it is (e.g. path, producing run); "" for a built-in dataset
    context: str = "train"  # what the run did with it: trained on it, or produced it

    def source_json(self) -> str:
        """The source as the store records it: name and digest, then where to find it."""
        where = json.loads(self.source) if self.source else {}
        return json.dumps({"name": self.name, "fingerprint": self.fingerprint, **where})
