"""The in-memory shape of Prometheus metrics, shared by the parser, the rename
rules, Patio's own registry and the writer.  Plain values, no I/O."""

from typing import List, NamedTuple, Optional, Tuple

Labels = Tuple[Tuple[str, str], ...]

# The family types of text format 0.0.4, as written in `# TYPE` (lower case).
FAMILY_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Sample(NamedTuple):
    name: str
    labels: Labels
    value: float
    timestamp: Optional[int] = None  # milliseconds since the epoch, as in the text format


class Family:
    """One metric family: the name as written in `# TYPE` and its samples, in order."""

    __slots__ = ("help", "name", "samples", "type")

    def __init__(
        self, name: str, type: str = "untyped", help: Optional[str] = None, samples: Optional[List[Sample]] = None
    ) -> None:
        self.name = name
        self.type = type
        self.help = help
        self.samples: List[Sample] = samples if samples is not None else []

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.type!r}, {len(self.samples)} samples)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Family):
            return NotImplemented
        return (self.name, self.type, self.help, self.samples) == (other.name, other.type, other.help, other.samples)
