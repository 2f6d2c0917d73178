import pytest
from conftest import assert_one_line_error, run_cli

from bench.config import flat_params, load_config, parse_overrides
from bench.errors import BenchError


@pytest.mark.parametrize("preset", ["demo", "tiny", "voxceleb"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.train.epochs >= 1


def test_overrides_are_typed():
    cfg = load_config("tiny", ["--train.epochs", "3", "--data.root=/x", "--model.stages", "2-6-6-2",
                               "--model.width_mult", "0.5", "--train.amp", "bf16"])
    assert cfg.train.epochs == 3 and cfg.data.root == "/x"
    assert cfg.model.stages == "2-6-6-2" and cfg.model.width_mult == 0.5
    assert flat_params(cfg)["train.epochs"] == 3


def test_yaml_file_preset(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("train:\n  epochs: 7\n")
    assert load_config(str(p)).train.epochs == 7


@pytest.mark.parametrize("args, fragment", [
    (["--train.epochs", "abc"], "train.epochs"),
    (["--train.epoch", "3"], "unknown key '--train.epoch'; did you mean --train.epochs"),
    (["--nosection.x", "3"], "nosection"),
    (["--train.lr", "-1"], "train.lr"),
    (["--train.amp", "fp8"], "train.amp"),
    (["--train.epochs"], "has no value"),
])
def test_bad_overrides_are_one_line(args, fragment):
    with pytest.raises(BenchError) as ei:
        load_config("tiny", args)
    assert fragment in str(ei.value)
    assert "\n" not in str(ei.value)


def test_parse_overrides_keeps_dash_lists():
    assert parse_overrides(["--model.stages", "3-4-6-3"]) == {"model.stages": "3-4-6-3"}


def test_cli_unknown_preset_and_bad_override():
    assert_one_line_error(run_cli("config", "--preset", "nope"), "unknown preset 'nope'")
    assert_one_line_error(run_cli("config", "--preset", "tiny", "--train.epochs", "x"), "train.epochs")


def test_the_command_line_shows_every_key_it_accepts():
    from conftest import run_cli

    keys = run_cli("config", "--preset", "tiny", "--keys", "--train.epochs", "7")
    assert keys.returncode == 0, keys.stderr
    assert "--train.epochs 7  (int)" in keys.stdout and "--data.root 'data/tiny'" in keys.stdout
    assert "svbench config --preset NAME --keys" in run_cli("train", "--help").stdout.replace("\n", " ")
