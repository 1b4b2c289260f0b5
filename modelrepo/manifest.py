"""The manifest's typed form: what a published model version is (its `ModelConfig`), what its ONNX graph takes and
returns (`TensorSpec`), and the state tensors a unidirectional model carries between chunks of a stream."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Cell = Literal["rnn", "gru", "lstm"]
Head = Literal["per_timestep", "last"]
CELLS = ("rnn", "gru", "lstm")
HEADS = ("per_timestep", "last")


@dataclass(frozen=True)
class ModelConfig:
    """What a sequence classifier is: written into every checkpoint and manifest, read by training and serving."""

    input_dim: int
    num_classes: int
    cell: Cell = "lstm"
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    head: Head = "per_timestep"

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        for name in ("input_dim", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers * directions, hidden): the state tensors are [layers * directions, B, hidden]."""
        return self.num_layers * self.num_directions, self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_names(config: ModelConfig) -> tuple[list[str], list[str]]:
    """Names of the state inputs and outputs; none for bidirectional models (a backward pass cannot stream)."""
    if config.bidirectional:
        return [], []
    if config.cell == "lstm":
        return ["h0", "c0"], ["hn", "cn"]
    return ["h0"], ["hn"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output, with KServe V2 datatype names (FP32, INT64) and named dynamic axes."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]  # str: a dynamic axis ("batch", "time")

    @property
    def batch_axis(self) -> int:
        return self.shape.index("batch")

    @property
    def time_axis(self) -> int | None:
        return self.shape.index("time") if "time" in self.shape else None

    def v2_shape(self) -> list[int]:
        return [-1 if isinstance(d, str) else d for d in self.shape]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["datatype"]), tuple(raw["shape"]))
