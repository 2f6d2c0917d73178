import pytest
import torch
from conftest import assert_one_line_error, run_cli

from bench.config import load_config
from bench.errors import BenchError
from bench.models import build_model, get_spec, list_presets, spec_from_config
from bench.models.heads import MarginHead
from bench.models.extraction import extraction_model
from bench.models.profile import meta_model, profile_model
from bench.models.resnet import MIN_FRAMES

STUDY_WITH_HEAD = {  # docs/STUDY.md: 81-bin input, 5,994-class head, 256-dim, ASTP
    "ResNet-18-D": 9_570_816, "ResNet-34-D": 16_459_520, "ResNet-50-D": 17_170_432,
    "ResNet-101-D": 38_364_672, "ResNet-200-D": 61_473_792, "ResNet-419-D": 133_550_080,
    "ResNet-50-W0.25": 2_789_824, "ResNet-50-W0.5": 5_813_888, "ResNet-50-W2": 61_117_184,
    "ResNet-50-W4": 233_945_344,
}


@pytest.mark.parametrize("name, expected", STUDY_WITH_HEAD.items())
def test_study_parameter_counts(name, expected):
    prof = profile_model(get_spec(name), num_classes=5994)
    assert prof.params_with_head == expected


@pytest.mark.parametrize("name, expected", [("ResNet34", 6_634_336), ("ResNet293", 28_626_016)])
def test_wespeaker_parameter_counts(name, expected):
    assert profile_model(get_spec(name)).params == expected


def test_depth_convention():
    assert get_spec("ResNet-50-D").depth == 50 and get_spec("ResNet-419-D").depth == 419
    assert get_spec("ResNet-18-D").depth == 18 and get_spec("ResNet293").depth == 293
    for name in ("ResNet-50-early", "ResNet-50-middle", "ResNet-50-late"):
        assert get_spec(name).depth == 50


SMALL = [n for n in list_presets() if n.startswith("tiny-") or n in ("ResNet18", "ResNet34", "ResNet-18-D",
                                                                     "ResNet-50-W0.25")]


@pytest.mark.parametrize("name", SMALL)
@torch.no_grad()
def test_forward_shapes(name):
    spec = get_spec(name)
    model = build_model(spec).eval()
    for t in (100, 200, 350, MIN_FRAMES):
        assert model(torch.randn(2, t, spec.n_mels)).shape == (2, 256)


@torch.no_grad()
def test_big_presets_build_on_meta_and_map_to_256():
    for name in list_presets():
        spec = get_spec(name)
        model = meta_model(spec)
        for t in (100, 200, 350):
            assert model(torch.empty(2, t, spec.n_mels, device="meta")).shape == (2, 256), (name, t)


def test_too_few_frames_is_an_error():
    spec = get_spec("tiny-ResNet34")
    with pytest.raises(ValueError, match="at least"):
        build_model(spec).eval()(torch.randn(1, MIN_FRAMES - 1, spec.n_mels))


@pytest.mark.parametrize("changes, fragment", [
    ({"channels": (0, 8, 16, 16)}, "positive"),
    ({"stages": ()}, "empty"),
    ({"block": "dense"}, "unknown block"),
    ({"width_mult": 0.001}, "zero channels"),
])
def test_unbuildable_specs(changes, fragment):
    with pytest.raises(BenchError, match=fragment):
        get_spec("ResNet-50-D").replace(**changes)


def test_custom_spec_from_overrides():
    cfg = load_config("tiny", ["--model.name", "tiny-ResNet-50-D", "--model.stages", "2-6-6-2",
                               "--model.width_mult", "0.5"])
    spec = spec_from_config(cfg.model, n_mels=80)
    assert spec.stages == (2, 6, 6, 2) and spec.width_mult == 0.5 and spec.family == "custom"
    assert build_model(spec)(torch.randn(2, 100, 80)).shape == (2, 256)


def test_margin_heads():
    emb = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 0])
    for kind in ("aam", "am"):
        head = MarginHead(8, 3, scale=30.0, margin=0.2, kind=kind)
        with_margin = head(emb, labels)
        head.set_margin(0.0)
        plain = head(emb, labels)
        # margin lowers only the true-class logit
        idx = torch.arange(4)
        assert torch.all(with_margin[idx, labels] < plain[idx, labels])
        mask = torch.ones_like(plain, dtype=torch.bool)
        mask[idx, labels] = False
        assert torch.allclose(with_margin[mask], plain[mask])


def test_profile_memory_is_labelled():
    prof = profile_model(get_spec("tiny-ResNet34"), num_classes=10, batch_size=8)
    assert prof.peak_train_memory_source in ("estimate", "cuda:measured")
    assert prof.peak_train_memory_mb > 0 and prof.gmacs_per_s_audio > 0


def test_models_cli():
    proc = run_cli("models", "list", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split(",")
    for col in ("name", "family", "depth", "stages", "width_mult", "params", "params_with_head", "gmacs_per_s_audio"):
        assert col in header
    assert "ResNet-50-D,study,preact3,50,3-4-6-3,1.0,15635968,17170432" in proc.stdout
    assert_one_line_error(run_cli("models", "show", "ResNet-9000"), "unknown model")


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", [n for n in list_presets() if n.startswith("tiny-")])
def test_extraction_model_equals_the_trained_one(name):
    """Batch norm folded + channels-last gives the trained model's embeddings (float rounding)."""
    torch.manual_seed(0)
    model = _trained_like(build_model(get_spec(name)))
    fast = extraction_model(model, channels_last=True)
    x = torch.randn(3, 137, model.spec.n_mels)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    assert fast.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    if model.spec.block in ("basic", "bottleneck"):
        assert left == 0  # every conv-BN pair folded
    else:  # pre-activation: only the BN at each block's input (after the previous block's add) stays
        assert left == sum(model.spec.stages)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the trained model is untouched
