"""Several random-access sources read as one (``data.train_split = "train+val"``)."""

from __future__ import annotations

import bisect


class ConcatSource:
    """The records of ``sources`` one after another; picklable when its parts are."""

    def __init__(self, sources):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("ConcatSource needs at least one source")
        self._ends = []
        total = 0
        for s in self.sources:
            total += len(s)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1]

    def __repr__(self) -> str:
        return "ConcatSource(" + ", ".join(repr(s) for s in self.sources) + ")"

    def __getitem__(self, index):
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self.sources[part][index - start]
