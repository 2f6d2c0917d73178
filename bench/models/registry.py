"""Registry of named ResNet presets (name -> ResNetSpec), as WeSpeaker's ``model: ResNet293``.

* The study's Kiwano family (docs/STUDY.md): ResNet-18-D ... ResNet-419-D, ResNet-50-W0.25 ... W4 and the
  depth-50 stage-distribution variants (ResNet-50-early, -middle2, -middle3, -middle, -late).
* WeSpeaker's thin ResNets: ResNet18 ... ResNet293.
* ``tiny-<name>`` for each of them: the same block layout with 1/8 (study) or 1/4 (WeSpeaker) of the
  channels, a stem that strides 2 along frequency and a 32-dim attention, for CPU demos and tests.
"""

from __future__ import annotations

from bench.errors import BenchError
from bench.models.resnet import ResNetEmbedding
from bench.models.spec import ResNetSpec

STUDY_CHANNELS = (128, 128, 256, 256)
WESPEAKER_CHANNELS = (32, 64, 128, 256)


def _study(stages, block="preact3", width=1.0) -> ResNetSpec:
    return ResNetSpec(family="study", block=block, stages=tuple(stages), channels=STUDY_CHANNELS, width_mult=width,
                      se_stages=(1, 2), activation="silu", pooling="astp", attention_dim=128,
                      embed="bn_linear_bn", embed_dim=256, n_mels=81)


def _wespeaker(stages, block) -> ResNetSpec:
    return ResNetSpec(family="wespeaker", block=block, stages=tuple(stages), channels=WESPEAKER_CHANNELS,
                      se_stages=(), activation="relu", pooling="tstp", embed="linear", embed_dim=256, n_mels=80)


PRESETS: dict[str, ResNetSpec] = {
    "ResNet-18-D": _study((2, 2, 2, 2), "preact2"),
    "ResNet-34-D": _study((3, 4, 6, 3), "preact2"),
    "ResNet-50-D": _study((3, 4, 6, 3)),
    "ResNet-101-D": _study((3, 4, 23, 3)),
    "ResNet-200-D": _study((3, 24, 36, 3)),
    "ResNet-419-D": _study((4, 44, 87, 4)),
    "ResNet-50-W0.25": _study((3, 4, 6, 3), width=0.25),
    "ResNet-50-W0.5": _study((3, 4, 6, 3), width=0.5),
    "ResNet-50-W2": _study((3, 4, 6, 3), width=2.0),
    "ResNet-50-W4": _study((3, 4, 6, 3), width=4.0),
    "ResNet-50-early": _study((10, 2, 2, 2)),
    "ResNet-50-middle2": _study((2, 10, 2, 2)),
    "ResNet-50-middle3": _study((2, 2, 10, 2)),
    "ResNet-50-middle": _study((2, 6, 6, 2)),
    "ResNet-50-late": _study((2, 2, 2, 10)),
    "ResNet18": _wespeaker((2, 2, 2, 2), "basic"),
    "ResNet34": _wespeaker((3, 4, 6, 3), "basic"),
    "ResNet50": _wespeaker((3, 4, 6, 3), "bottleneck"),
    "ResNet101": _wespeaker((3, 4, 23, 3), "bottleneck"),
    "ResNet152": _wespeaker((3, 8, 36, 3), "bottleneck"),
    "ResNet221": _wespeaker((6, 16, 48, 3), "bottleneck"),
    "ResNet293": _wespeaker((10, 20, 64, 3), "bottleneck"),
}


def _tiny(spec: ResNetSpec) -> ResNetSpec:
    div = 8 if spec.family == "study" else 4
    return spec.replace(channels=tuple(max(1, c // div) for c in spec.channels), stem_stride_freq=2,
                        attention_dim=32, family=f"{spec.family}-tiny")


PRESETS.update({f"tiny-{k}": _tiny(v) for k, v in list(PRESETS.items())})


def list_presets() -> list[str]:
    return list(PRESETS)


def get_spec(name: str) -> ResNetSpec:
    try:
        return PRESETS[name]
    except KeyError:
        close = [n for n in PRESETS if name.lower().replace("_", "-") in n.lower()][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else "; `svbench models list` shows them"
        raise BenchError(f"unknown model '{name}'{hint}") from None


def _dashed(value: str, what: str) -> tuple[int, ...]:
    if value in ("", "none", "None"):
        return ()
    try:
        return tuple(int(v) for v in str(value).split("-"))
    except ValueError:
        raise BenchError(f"model.{what} '{value}' is not a dash-separated list of integers such as 3-4-6-3") from None


def spec_from_config(model_cfg, n_mels: int | None = None) -> ResNetSpec:
    """A preset named by ``model.name`` with the config's field overrides applied."""
    spec = get_spec(model_cfg.name)
    changes = {}
    if model_cfg.block is not None:
        changes["block"] = model_cfg.block
    if model_cfg.stages is not None:
        changes["stages"] = _dashed(model_cfg.stages, "stages")
        if len(changes["stages"]) != len(spec.channels) and model_cfg.channels is None:
            raise BenchError(f"model.stages {model_cfg.stages} has {len(changes['stages'])} stages but the preset has "
                             f"{len(spec.channels)} channel counts; set model.channels too")
    if model_cfg.channels is not None:
        changes["channels"] = _dashed(model_cfg.channels, "channels")
    if model_cfg.se_stages is not None:
        changes["se_stages"] = _dashed(model_cfg.se_stages, "se_stages")
    for key in ("width_mult", "activation", "pooling", "embed_dim", "stem_channels", "stem_stride_freq"):
        value = getattr(model_cfg, key)
        if value is not None:
            changes[key] = value
    if n_mels is not None:
        changes["n_mels"] = n_mels
    if changes:
        spec = spec.replace(family="custom" if any(k != "n_mels" for k in changes) else spec.family, **changes)
    return spec


def build_model(spec: ResNetSpec):
    return ResNetEmbedding(spec)
