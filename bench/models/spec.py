"""``ResNetSpec``: everything that defines a ResNet speaker-embedding network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from bench.errors import BenchError

BLOCKS = ("basic", "bottleneck", "preact2", "preact3")
CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3, "preact2": 2, "preact3": 3}
EXPANSION = {"basic": 1, "bottleneck": 4, "preact2": 1, "preact3": 1}


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet over (frequency x time) log-mel maps.

    block: ``basic`` (WeSpeaker 2-conv post-activation), ``bottleneck`` (WeSpeaker, expansion 4),
    ``preact2`` / ``preact3`` (the study's Kiwano pre-activation blocks, 2 or 3 convolutions).
    channels: base channels per stage before ``width_mult``; strides are 1, 2, 2, 2.
    se_stages: 1-based stages whose blocks carry squeeze-excitation.
    attention_dim: ASTP bottleneck before ``width_mult`` (the study scales it with the width).
    embed: ``linear`` (WeSpeaker: one Linear) or ``bn_linear_bn`` (the study).
    stem_stride_freq: stride of the stem along frequency (demo speed option; 1 in published shapes).
    """

    family: str = "custom"
    block: str = "preact3"
    stages: tuple[int, ...] = (3, 4, 6, 3)
    channels: tuple[int, ...] = (128, 128, 256, 256)
    width_mult: float = 1.0
    stem_channels: int | None = None  # default: first stage's channels
    se_stages: tuple[int, ...] = (1, 2)
    activation: str = "silu"
    pooling: str = "astp"
    attention_dim: int = 128
    embed: str = "bn_linear_bn"
    embed_dim: int = 256
    n_mels: int = 81
    stem_stride_freq: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.block not in BLOCKS:
            raise BenchError(f"unknown block '{self.block}'; choose one of {', '.join(BLOCKS)}")
        if not self.stages:
            raise BenchError("model stages are empty; give blocks per stage such as 3-4-6-3")
        if len(self.channels) != len(self.stages):
            raise BenchError(f"model has {len(self.stages)} stages but {len(self.channels)} channel counts; give one "
                             "per stage")
        if any(s < 1 for s in self.stages):
            raise BenchError(f"every stage needs at least one block (got {'-'.join(map(str, self.stages))})")
        if any(c < 1 for c in self.channels) or self.width_mult <= 0:
            raise BenchError("model channels and width_mult must be positive")
        if min(self.scaled_channels) < 1:
            raise BenchError(f"width_mult {self.width_mult} leaves a stage with zero channels; raise it")
        if self.activation not in ("relu", "silu"):
            raise BenchError(f"unknown activation '{self.activation}'; use relu or silu")
        if self.pooling not in ("tstp", "astp"):
            raise BenchError(f"unknown pooling '{self.pooling}'; use tstp or astp")
        if self.embed not in ("linear", "bn_linear_bn"):
            raise BenchError(f"unknown embedding '{self.embed}'; use linear or bn_linear_bn")
        if any(s < 1 or s > len(self.stages) for s in self.se_stages):
            raise BenchError(f"se_stages {self.se_stages} name stages outside 1..{len(self.stages)}")
        if self.embed_dim < 1 or self.n_mels < 8:
            raise BenchError("embed_dim must be >= 1 and n_mels >= 8")

    @property
    def scaled_channels(self) -> tuple[int, ...]:
        return tuple(int(round(c * self.width_mult)) for c in self.channels)

    @property
    def depth(self) -> int:
        """Convolutions in the blocks + 2 (the study's and torchvision's convention)."""
        return sum(self.stages) * CONVS_PER_BLOCK[self.block] + 2

    @property
    def stages_str(self) -> str:
        return "-".join(map(str, self.stages))

    def replace(self, **changes) -> "ResNetSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depth"] = self.depth
        return d
