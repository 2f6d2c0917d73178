"""Model zoo: one ResNetSpec builds the study's ResNet-X-D family and WeSpeaker's thin ResNets."""

from bench.models.registry import build_model, get_spec, list_presets, spec_from_config
from bench.models.spec import ResNetSpec

__all__ = ["ResNetSpec", "build_model", "get_spec", "list_presets", "spec_from_config"]
