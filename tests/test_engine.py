import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_one_line_error, run_cli, sigkill_at_checkpoint

from bench.config import load_config
from bench.errors import BenchError
from bench.orchestration.variant import run_variant
from bench.training import checkpoint as ckpt

COMMON = ["--train.epochs", "3", "--train.batch_size", "8", "--train.threads", "1",
          "--train.checkpoint_every_steps", "1"]


def _cfg(root, *extra):
    return load_config("tiny", ["--data.root", str(root), *COMMON, *extra])


def _weights(path):
    return ckpt.load(path)["model"]


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    """One uninterrupted run of the COMMON settings: the same-seed and the resume tests compare against it."""
    out = tmp_path_factory.mktemp("reference") / "ref"
    return run_variant(_cfg(tiny_corpus), out, progress=False)


def test_same_seed_same_result(tiny_corpus, tmp_path, reference):
    shutil.copytree(reference.out_dir, tmp_path / "a")  # this test replaces its checkpoints below
    a = reference
    b = run_variant(_cfg(tiny_corpus), tmp_path / "b", progress=False)
    assert a.metrics["synth"].eer_pct == b.metrics["synth"].eer_pct
    wa, wb = _weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "scores" / "synth.txt").read_text().splitlines()[0].count(" ") == 3
    res = json.loads((tmp_path / "a" / "result.json").read_text())
    assert res["train"]["steps"] == 18 and len(res["train"]["history"]) == 3
    assert {"loss", "accuracy", "lr", "margin"} <= set(res["train"]["history"][0])
    # a fresh run in a folder holding another run's checkpoints: one-line error, nothing touched; --force
    # replaces them, and model averaging takes this run's epochs only
    stale = tmp_path / "a" / "checkpoints" / "epoch_040.pt"
    stale.write_bytes(b"an epoch of a longer, earlier run")
    args = ["train", "--no-track", "--preset", "tiny", "--data.root", tiny_corpus, *COMMON, "--out", tmp_path / "a"]
    assert_one_line_error(run_cli(*args), "checkpoint(s) of an earlier run", "--force")
    assert stale.is_file() and (tmp_path / "a" / "model.pt").is_file()
    proc = run_cli(*args, "--train.epochs", "2", "--train.average_last", "3", "--force")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale.exists() and sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("epoch_*.pt")) == [
        "epoch_001.pt", "epoch_002.pt"]
    assert ckpt.load(tmp_path / "a" / "model.pt")["averaged_epochs"] == 2


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(tiny_corpus, tmp_path, reference):
    ref = reference
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "bench", "train", "--preset", "tiny", "--data.root", str(tiny_corpus), *COMMON,
            "--out", str(out)]
    state, code = sigkill_at_checkpoint(args, out / "checkpoints" / "last.pt",
                                        lambda s: s["epoch"] >= 1 and s["batch_in_epoch"] > 0, timeout_s=120)
    assert state is not None, "training finished before it could be killed"
    killed_at = (state["epoch"], state["batch_in_epoch"])
    assert code == -signal.SIGKILL
    assert not (out / "result.json").exists()
    done = run_cli("train", "--preset", "tiny", "--data.root", tiny_corpus, *COMMON, "--out", out, "--resume")
    assert done.returncode == 0, done.stderr
    wr, wk = _weights(Path(ref.out_dir) / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(wr[k], wk[k]) for k in wr), killed_at
    res = json.loads((out / "result.json").read_text())
    assert res["metrics"]["synth"]["eer_pct"] == ref.metrics["synth"].eer_pct
    assert [h["loss"] for h in res["train"]["history"]] == [h["loss"] for h in ref.train.history]


def test_ddp_two_ranks_on_cpu(tiny_corpus, tmp_path, fake_machine):
    """Two gloo ranks, each measuring its own fake GPU (Zeus's device layer) beside one fake RAPL tree."""
    out = tmp_path / "ddp"
    env = fake_machine(gpu_w=[200, 200], rapl_w=50, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "bench", "train", "--preset", "tiny", "--data.root", str(tiny_corpus),
                           "--train.epochs", "2", "--train.batch_size", "4", "--out", str(out), "--no-track",
                           "--eval.latency", "false", "--eval.infer_precisions", "[fp32]",
                           "--train.lr", "0.05", "--train.lr_reference_batch", "16"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["train"]["world"] == 2
    assert res["train"]["steps"] == 2 * (48 // 2 // 4)
    # the linear rule on the global batch, 2 ranks x 4 = 8 against 16: half of train.lr (not a quarter)
    from bench.training.schedule import lr_at

    steps, final_lr = res["train"]["steps"], load_config("tiny", {}).train.final_lr
    assert res["train"]["history"][0]["lr"] == pytest.approx(lr_at(steps // 2 - 1, steps, 0.025, final_lr, 0))
    assert 0.0 <= res["metrics"]["synth"]["eer_pct"] <= 100.0
    assert "model" in ckpt.load(out / "model.pt")
    # energy: the epochs (summed over ranks) add up to the total; both GPUs in it, RAPL once for the machine
    m, history = res["energy_metrics"], res["train"]["history"]
    assert sum(h["energy_j"] for h in history) == pytest.approx(m["train/energy_j"], rel=1e-9)
    assert m["train/energy_gpu_j"] == pytest.approx(2 * 200 * m["train/time_s"], rel=0.1)
    assert m["train/energy_cpu_j"] < 1.2 * 50 * m["train/time_s"]
    assert res["energy_tags"]["energy.source"] == "gpu:nvml,cpu:rapl,dram:rapl"


def test_eval_cli_and_bad_checkpoints(tiny_corpus, tiny_model, tmp_path):
    (tmp_path / "m").mkdir()
    shutil.copy(tiny_model, tmp_path / "m" / "model.pt")  # eval writes its scores beside the checkpoint
    ok = run_cli("eval", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint", tmp_path / "m" / "model.pt",
                 "--trials", "synth", "--json")
    assert ok.returncode == 0, ok.stderr
    assert "EER" in ok.stdout
    assert_one_line_error(run_cli("eval", "--preset", "tiny", "--checkpoint", tmp_path / "nope.pt"), "does not exist")
    assert_one_line_error(run_cli("eval", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint",
                                  tmp_path / "m" / "model.pt", "--eval.compile", "true",
                                  env={"CXX": "/nonexistent/g++"}),
                          "needs a C++ compiler")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_cli("eval", "--preset", "tiny", "--checkpoint", bad), "cannot be loaded")
    # a model.pt whose weights do not fit its spec
    payload = ckpt.load(tmp_path / "m" / "model.pt")
    payload["spec"]["width_mult"] = 2.0
    ckpt.save(payload, tmp_path / "mismatch.pt")
    assert_one_line_error(run_cli("eval", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint",
                                  tmp_path / "mismatch.pt"), "does not match")


def _eval_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def test_resume_with_other_model_is_refused(tiny_corpus, tmp_path):
    run_variant(_cfg(tiny_corpus, "--train.epochs", "1"), tmp_path / "r", progress=False)
    assert_one_line_error(run_cli("train", "--preset", "tiny", "--data.root", tiny_corpus, "--model", "tiny-ResNet34",
                                  "--out", tmp_path / "r", "--resume"), "another model")


def test_nan_loss_names_the_step(tiny_corpus, tmp_path):
    cfg = _cfg(tiny_corpus, "--train.lr", "1e30", "--train.final_lr", "1e30", "--train.momentum", "0")
    with pytest.raises(BenchError, match=r"at step \d+"):
        run_variant(cfg, tmp_path / "nan", progress=False)


def test_empty_trial_list(tiny_corpus, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    (root / "trials" / "empty.txt").write_text("")
    run_variant(_cfg(root, "--train.epochs", "1", "--data.trials", "[synth]"), tmp_path / "m", progress=False)
    assert_one_line_error(run_cli("eval", "--preset", "tiny", "--data.root", root, "--checkpoint",
                                  tmp_path / "m" / "model.pt", "--trials", "empty"), "empty")


@pytest.mark.slow
def test_energy_in_result_and_infer_cli(tiny_corpus, tmp_path):
    cfg = _cfg(tiny_corpus, "--train.epochs", "2", "--energy.forecast", "true",
               "--eval.infer_precisions", "[fp32,bf16]")
    res = run_variant(cfg, tmp_path / "e", progress=False)
    em, tags = res.energy_metrics, res.energy_tags
    assert em["train/energy_j"] > 0 and em["train/co2_g"] > 0 and em["train/time_s"] > 0
    assert em["train/energy_kwh"] == pytest.approx(em["train/energy_j"] / 3.6e6)
    assert tags["energy.source"] != "none" and tags["carbon.region"] == "FRA"
    assert tags["energy.estimated"] == ("true" if "estimate" in tags["energy.source"] else "false")
    assert all(h["energy_j"] > 0 for h in res.train.history)  # per-epoch energy
    assert set(res.inference) == {"fp32", "bf16"}
    assert res.inference["fp32"].energy_j_per_1k_trials > 0
    assert res.forecast.energy_j > 0 and res.forecast.error_pct is not None and res.forecast.probe_energy_j > 0
    out = run_cli("infer", "--preset", "tiny", "--data.root", tiny_corpus, "--checkpoint", tmp_path / "e" / "model.pt",
                  "--precision", "fp32,bf16", "--eval.latency", "false")  # latency: covered by run_variant above
    assert out.returncode == 0, out.stderr
    assert "energy_j_per_1k_trials" in out.stdout and "bf16" in out.stdout
    assert_one_line_error(run_cli("infer", "--preset", "tiny", "--checkpoint", tmp_path / "e" / "model.pt",
                                  "--precision", "fp8"), "precision")


def test_the_learning_rate_is_scaled_linearly_to_the_batch_when_its_reference_batch_is_set(tiny_corpus, tmp_path):
    """train.lr_reference_batch: train.lr was tuned at that batch, so batch 8 against 16 trains at half of it (the
    linear scaling rule the batch-size search dimension uses)."""
    from bench.training.schedule import lr_at
    from bench.training.trainer import train

    cfg = load_config("tiny", ["--data.root", str(tiny_corpus), "--train.epochs", "2", "--train.batch_size", "8",
                               "--train.threads", "1", "--train.lr", "0.05", "--train.lr_reference_batch", "16"])
    assert cfg.train.scaled_lr() == pytest.approx(0.025)
    tr = train(cfg, tmp_path / "lr", progress=False)
    per_epoch = tr.steps // 2
    expected = lr_at(per_epoch - 1, tr.steps, 0.025, cfg.train.final_lr, 0)  # the lr of the epoch's last step
    assert tr.history[0]["lr"] == pytest.approx(expected)
    assert tr.history[0]["lr"] != pytest.approx(lr_at(per_epoch - 1, tr.steps, 0.05, cfg.train.final_lr, 0))
