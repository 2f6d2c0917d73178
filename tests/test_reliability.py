"""Faults, bad input and security, each proven by a test (docs/RELIABILITY.md)."""

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, assert_one_line_error, fresh_env, run_cli, sigkill_at_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from bench.config import Config, load_config
from bench.data.features import Fbank
from bench.data.loader import TrainCrops, collate_crops, crop_samples
from bench.data.manifest import read_manifest
from bench.errors import BenchError
from bench.training import checkpoint as ckpt

TRAIN = ["--train.epochs", "3", "--train.batch_size", "8", "--train.threads", "1",
         "--train.checkpoint_every_steps", "1", "--tracking.log_model", "false"]


def _kill_at_step(args, last: Path, step: int, env) -> int:
    state, _ = sigkill_at_checkpoint(args, last, lambda s: s["step"] >= step, env)
    return state["step"] if state is not None else -1


@pytest.mark.slow
def test_three_sigkills_then_resume_match_uninterrupted_and_mlflow_is_clean(tiny_corpus, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = fresh_env(MLFLOW_TRACKING_URI=uri)
    base = [sys.executable, "-m", "bench", "train", "--preset", "tiny", "--data.root", str(tiny_corpus), *TRAIN]
    ref = subprocess.run(base + ["--out", str(tmp_path / "ref"), "--tracking.experiment", "ref"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    args = base + ["--out", str(out), "--tracking.experiment", "killed", "--resume"]
    points = sorted(random.Random(7).sample(range(2, 17), 3))  # 18 steps in all
    killed = [_kill_at_step(args, out / "checkpoints" / "last.pt", p, env) for p in points]
    assert all(k >= 0 for k in killed), killed
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = ckpt.load(tmp_path / "ref" / "model.pt")["model"], ckpt.load(out / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    ref_run = client.search_runs([client.get_experiment_by_name("ref").experiment_id])[0]
    assert len(runs) == 1, "the resumed training continues the killed run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eer_pct/synth"] == ref_run.data.metrics["eer_pct/synth"]
    for key in ("train/epoch_loss", "train/epoch_lr", "train/epoch_energy_j"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2, 3], (key, steps)  # every epoch once, no duplicate step
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/epoch_loss"),
                                      key=lambda m: m.step)]
    ref_losses = [m.value for m in sorted(client.get_metric_history(ref_run.info.run_id, "train/epoch_loss"),
                                          key=lambda m: m.step)]
    assert losses == ref_losses


def _tmpfs(path: Path, size_bytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_and_read_only_keep_the_last_good_checkpoint(tiny_corpus, tmp_path):
    probe = tmp_path / "probe"
    cfg = ["train", "--no-track", "--preset", "tiny", "--model", "tiny-ResNet-50-W0.25", "--data.root", tiny_corpus,
           "--train.epochs", "1", "--train.batch_size", "8", "--train.checkpoint_every_steps", "1"]
    assert run_cli(*cfg, "--train.max_steps", "1", "--out", probe).returncode == 0
    size = (probe / "checkpoints" / "last.pt").stat().st_size
    disk = tmp_path / "disk"
    if not _tmpfs(disk, int(size * 1.6) // 4096 * 4096 + 4096):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        proc = run_cli(*cfg, "--out", disk / "run")
        assert_one_line_error(proc, "cannot write checkpoint", "no space left", "previous checkpoint is kept")
        state = ckpt.load(disk / "run" / "checkpoints" / "last.pt")
        assert state["step"] == 1
        assert not [p for p in (disk / "run" / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left
        # the same folder read-only
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        proc = run_cli(*cfg, "--out", disk / "run", "--resume")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "read-only" in proc.stderr.lower()
        assert ckpt.load(disk / "run" / "checkpoints" / "last.pt")["step"] == 1
    finally:
        _umount(disk)


KEYS = ["train.epochs", "train.lr", "train.amp", "data.root", "model.stages", "model.width_mult", "head.margin",
        "energy.pue", "eval.ci_level", "search.n_trials", "seeds", "nosuch.key", "train", "train.nope"]
VALUES = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.text(max_size=12), st.sampled_from(["bf16", "[1,2]", "{a: 1}", "null", "3-4-6-3", "true",
                                                          "-1e9"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS) | st.text(min_size=1, max_size=10), VALUES), max_size=4))
def test_any_override_gives_a_config_or_one_line_error(pairs):
    args = [x for k, v in pairs for x in (f"--{k}", v)]
    try:
        cfg = load_config("tiny", args)
    except BenchError as err:
        assert "\n" not in str(err) and str(err)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.text(max_size=15), max_size=5))
def test_cli_never_tracebacks(argv):
    import contextlib
    import io

    from bench.cli.main import main

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(["config", "--preset", "tiny", *argv])
    err = buf_err.getvalue()
    assert code in (0, 2)
    if code == 2:
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1 and "Traceback" not in err


def test_cli_parser_errors_are_one_line():
    assert_one_line_error(run_cli("train"), "required")
    assert_one_line_error(run_cli("nosuchcommand"), "invalid choice")
    assert_one_line_error(run_cli("models", "list", "--format", "xml"), "invalid choice")


# ---------------------------------------------------------------- audio edge cases
def _write_corpus_with(tmp_path, tiny_corpus, name, writer):
    root = tmp_path / name
    shutil.copytree(tiny_corpus, root)
    df = read_manifest(root / "train.csv")
    path = root / df["path"].iloc[0]
    writer(path)
    return root, df


@pytest.mark.parametrize("case", ["corrupt", "empty", "stereo", "8k"])
def test_unreadable_training_audio_is_skipped_and_counted(tiny_corpus, tmp_path, case):
    def writer(p):
        if case == "corrupt":
            p.write_bytes(b"RIFF....WAVEfmt garbage")
        elif case == "empty":
            sf.write(str(p), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
        elif case == "stereo":
            sf.write(str(p), np.zeros((16000, 2), dtype=np.float32), 16000, subtype="PCM_16")
        else:
            sf.write(str(p), np.zeros(8000, dtype=np.float32), 8000, subtype="PCM_16")
    root, df = _write_corpus_with(tmp_path, tiny_corpus, case, writer)
    ds = TrainCrops(df, root, load_config("tiny").data, seed=0)
    wav, labels, skipped = collate_crops([ds[(0, i)] for i in range(3)])
    assert skipped == 1 and wav.shape[0] == 2


def test_short_silent_and_clipped_audio_train_fine(tiny_corpus, tmp_path):
    cfg = load_config("tiny").data
    need = crop_samples(cfg.crop_frames)
    cases = {"short": np.random.default_rng(0).normal(0, 0.1, need // 3), "silent": np.zeros(need * 2),
             "clipped": np.clip(np.random.default_rng(1).normal(0, 3.0, need * 2), -1, 1)}
    fb = Fbank()
    for name, x in cases.items():
        root, df = _write_corpus_with(tmp_path, tiny_corpus, name,
                                      lambda p, x=x: sf.write(str(p), x.astype(np.float32), 16000, subtype="PCM_16"))
        df.loc[0, "num_samples"] = len(x)
        wav, label = TrainCrops(df, root, cfg, seed=0)[(0, 0)]
        assert wav.shape == (need,)  # short utterances are repeated up to the crop
        feats = fb(wav.unsqueeze(0))
        assert torch.isfinite(feats).all(), name


def test_evaluation_rejects_too_short_utterance(tiny_corpus, tmp_path):
    from bench.eval.scoring import extract_embeddings
    from bench.models import build_model, get_spec

    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    df = read_manifest(root / "eval.csv")
    p = root / df["path"].iloc[0]
    sf.write(str(p), np.zeros(1000, dtype=np.float32), 16000, subtype="PCM_16")
    model = build_model(get_spec("tiny-ResNet34").replace(n_mels=80)).eval()
    with pytest.raises(BenchError, match="shorter than"):
        extract_embeddings(model, Fbank(), [df["utt_id"].iloc[0]], [p], [1000], 60000, torch.device("cpu"))


# ---------------------------------------------------------------- security
class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_checkpoints_load_with_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Evil(marker)}, fh)
    with pytest.raises(BenchError, match="cannot be loaded safely"):
        ckpt.load(path)
    assert not marker.exists()


def test_no_shell_true_in_the_code():
    offenders = [str(p) for d in ("bench", "benchmarks", "scripts") for p in (REPO / d).rglob("*.py")
                 if "shell=True" in p.read_text()]
    assert offenders == []


def test_servers_bind_loopback_by_default():
    from bench.cli.main import build_parser

    args = build_parser().parse_args(["dashboard", "--storage", "x"])
    assert args.host == "127.0.0.1"
    makefile = (REPO / "Makefile").read_text()
    assert "0.0.0.0" not in makefile


def test_mlproject_parameters_cannot_inject_shell(tmp_path):
    marker = tmp_path / "PWNED"
    env = fresh_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
                    PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "data",
                           "-P", f"out={tmp_path}/d; touch {marker}", "-P", "size=tiny"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert not marker.exists()
    # the whole value reached svbench as one argument (a folder name with '; touch' in it)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / f"d; touch {marker}").exists() or any("touch" in p.name for p in tmp_path.iterdir())


# ---------------------------------------------------------------- killed workers and sweeps
@pytest.mark.solo  # one-second heartbeats: a loaded machine could let a live worker's trial look stale
def test_search_worker_killed_mid_trial_is_failed_by_heartbeat(tiny_corpus, tmp_path):
    import optuna

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    env = fresh_env(MLFLOW_TRACKING_URI=uri)
    args = [sys.executable, "-m", "bench", "search", "--preset", "tiny", "--data.root", str(tiny_corpus),
            "--val-speakers", "0.25",
            "--train.epochs", "3", "--train.batch_size", "4", "--tracking.log_model", "false", "--study", "hb",
            "--storage", storage, "--n-trials", "3", "--search.heartbeat_s", "1", "--search.stage_blocks_max",
            "[1,1,1,1]",
            "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    victim = None
    while time.time() < deadline and proc.poll() is None and victim is None:
        try:
            st_ = optuna.load_study(study_name="hb", storage=storage)
            running = [t for t in st_.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING
                       and "spent_so_far" in t.user_attrs]  # mid-trial, one epoch done
            if running:
                victim = running[0].number
                os.kill(proc.pid, signal.SIGKILL)
        except Exception:
            pass
        time.sleep(0.1)
    proc.wait()
    assert victim is not None, "no trial was running to kill"
    time.sleep(3)  # past the grace period (2 x heartbeat)
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="hb", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert len(states) == 3 and states[victim] == optuna.trial.TrialState.FAIL
    assert all(s == optuna.trial.TrialState.COMPLETE for n, s in states.items() if n != victim)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(study.trials[victim].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["energy.source"] != "none"  # labelled from its first epoch on
    # the killed search process never recorded its cost: what its trials recorded is in the study's cost
    killed_run = study.trials[victim].user_attrs["search_run"]
    cost = {r["search_run"]: r for r in study.user_attrs["search_cost_runs"]}
    assert cost[killed_run]["energy_j"] >= study.trials[victim].user_attrs["spent_so_far"]["energy_j"] > 0
    assert "killed" in cost[killed_run]["energy.incomplete"]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["search/energy_j"] == pytest.approx(sum(r["energy_j"] for r in cost.values()))
    assert "killed" in parent.data.tags["energy.incomplete"]


@pytest.mark.slow
def test_interrupted_sweep_rerun_skips_finished_and_resumes(tiny_corpus, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = fresh_env(MLFLOW_TRACKING_URI=uri)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: interrupted\npreset: tiny\nvariants:\n  - {name: first, model: tiny-ResNet-50-W0.25}\n"
                    "  - {name: second, model: tiny-ResNet-18-D}\n")
    args = [sys.executable, "-m", "bench", "sweep", "--grid", str(grid), "--data-root", str(tiny_corpus),
            "--out", str(tmp_path / "runs"), *TRAIN]
    killed = _kill_at_step(args, tmp_path / "runs" / "interrupted" / "second" / "checkpoints" / "last.pt", 3, env)
    assert killed >= 3
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "first: already finished, skipped" in again.stdout
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sv-energy-bench")
    runs = client.search_runs([exp.experiment_id])
    variants = [r for r in runs if r.data.tags.get("svbench.kind") == "variant"]
    parents = [r for r in runs if r.data.tags.get("svbench.kind") == "sweep"]
    assert sorted(r.data.tags["svbench.variant"] for r in variants) == ["first", "second"]
    assert all(r.info.status == "FINISHED" for r in variants + parents) and len(parents) == 1
    second = next(r for r in variants if r.data.tags["svbench.variant"] == "second")
    steps = [m.step for m in client.get_metric_history(second.info.run_id, "train/epoch_loss")]
    assert sorted(steps) == [1, 2, 3]
