import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import assert_one_line_error, run_cli

from bench.config import load_config
from bench.data.loader import TrainCrops, collate_crops
from bench.data.manifest import read_manifest


def _fake_vox1(tiny_corpus: Path, dst: Path) -> Path:
    """A VoxCeleb1-shaped folder built from the tiny corpus, with the synthetic trial list."""
    shutil.copytree(tiny_corpus / "wav", dst / "wav")
    shutil.copy(tiny_corpus / "trials" / "synth.txt", dst / "veri_test2.txt")
    return dst


def test_prepare_voxceleb1_ok(tiny_corpus, tmp_path):
    vox = _fake_vox1(tiny_corpus, tmp_path / "vox1")
    proc = run_cli("data", "prepare", "--voxceleb1", vox, "--out", tmp_path / "prep")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prep" / "trials" / "vox1-O.txt").is_file()
    train = read_manifest(tmp_path / "prep" / "train.csv")
    ev = read_manifest(tmp_path / "prep" / "eval.csv")
    assert len(ev) == 84 and train["speaker"].nunique() == 8  # trial speakers excluded from training


def test_nonexistent_root(tmp_path):
    assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", tmp_path / "nope", "--out", tmp_path / "o"),
                          "does not exist")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", tmp_path / "empty", "--out", tmp_path / "o"),
                          "no VoxCeleb1 files")
    assert not (tmp_path / "o").exists()


def test_corrupt_wav(tiny_corpus, tmp_path):
    vox = _fake_vox1(tiny_corpus, tmp_path / "vox1")
    victim = sorted((vox / "wav").rglob("*.wav"))[3]
    victim.write_bytes(b"RIFF\x00\x00not a wav at all")
    assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", vox, "--out", tmp_path / "o"),
                          "corrupt", victim.name)
    assert not (tmp_path / "o").exists()


def test_stereo_and_8k(tiny_corpus, tmp_path):
    for kind in ("stereo", "8k"):
        vox = _fake_vox1(tiny_corpus, tmp_path / f"vox1_{kind}")
        victim = sorted((vox / "wav").rglob("*.wav"))[0]
        x, sr = sf.read(str(victim))
        if kind == "stereo":
            sf.write(str(victim), np.stack([x, x], axis=1), sr, subtype="PCM_16")
            frag = "2 channels"
        else:
            sf.write(str(victim), x[::2], 8000, subtype="PCM_16")
            frag = "8000 Hz"
        assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", vox, "--out", tmp_path / f"o_{kind}"), frag)


def test_trial_naming_missing_file(tiny_corpus, tmp_path):
    vox = _fake_vox1(tiny_corpus, tmp_path / "vox1")
    with open(vox / "veri_test2.txt", "a") as fh:
        fh.write("1 id99999/abc/00001.wav id99999/abc/00002.wav\n")
    assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", vox, "--out", tmp_path / "o"),
                          "names 2 file(s) missing", "id99999")


def test_malformed_trial_line(tiny_corpus, tmp_path):
    vox = _fake_vox1(tiny_corpus, tmp_path / "vox1")
    with open(vox / "veri_test2.txt", "a") as fh:
        fh.write("target id10001/a.wav\n")
    assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", vox, "--out", tmp_path / "o"),
                          "malformed")


def _encode_m4a(wav: np.ndarray, rate: int, path: Path) -> None:
    """An AAC-in-MP4 file as VoxCeleb2 ships them, encoded with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((wav * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_voxceleb2_aac_is_decoded_with_pyav(tiny_corpus, tmp_path):
    """m4a (AAC, here 44.1 kHz) -> 16 kHz mono PCM16 wav through PyAV, nothing from apt; a corrupt m4a is a
    one-line error."""
    vox = _fake_vox1(tiny_corpus, tmp_path / "vox1")
    src = sorted((tiny_corpus / "wav").rglob("*.wav"))[:4]
    aac = tmp_path / "vox2" / "dev" / "aac"
    lengths = {}
    for i, f in enumerate(src):
        wav, rate = sf.read(f, dtype="float32")
        t = np.arange(int(len(wav) * 44100 / rate)) / 44100
        up = np.interp(t, np.arange(len(wav)) / rate, wav).astype(np.float32)
        rel = f"id0000{i % 2}/yt{i}/00001"
        _encode_m4a(up, 44100, aac / f"{rel}.m4a")
        lengths[rel] = len(wav)
    proc = run_cli("data", "prepare", "--voxceleb1", vox, "--voxceleb2", tmp_path / "vox2", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    train = read_manifest(tmp_path / "o" / "train.csv")
    assert len(train) == 4 and train["speaker"].nunique() == 2
    for rel, n in lengths.items():
        info = sf.info(tmp_path / "o" / "voxceleb2_wav" / f"{rel}.wav")
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(info.frames - n) < 0.1 * 16000  # AAC adds encoder priming and padding, < 0.1 s
    bad = aac / "id00009" / "x" / "00001.m4a"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00" * 64)
    assert_one_line_error(run_cli("data", "prepare", "--voxceleb1", vox, "--voxceleb2", tmp_path / "vox2",
                                  "--out", tmp_path / "o2"), "cannot decode", "00001.m4a")
    assert not list((tmp_path / "o2").rglob("*.wav.*"))  # nothing half-written


def test_synth_size_and_existing_out(tmp_path):
    assert_one_line_error(run_cli("data", "synth", "--out", tmp_path / "x", "--size", "huge"), "unknown corpus size")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert_one_line_error(run_cli("data", "synth", "--out", tmp_path / "full", "--size", "tiny"), "already exists")
    # a good one writes nothing on stderr: its pool's forked workers, ended by SIGTERM when the pool closes, die
    # quietly (they do not inherit svbench's SIGTERM handler, bench/signals.py)
    ok = run_cli("data", "synth", "--out", tmp_path / "ok", "--size", "tiny")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr[-2000:]


def test_corrupt_file_in_training_is_skipped_and_counted(tiny_corpus, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    df = read_manifest(root / "train.csv")
    (root / df["path"].iloc[0]).write_bytes(b"garbage")
    cfg = load_config("tiny")
    ds = TrainCrops(df, root, cfg.data, seed=1)
    wav, labels, skipped = collate_crops([ds[(0, i)] for i in range(4)])
    assert skipped == 1 and wav.shape[0] == 3 and labels.shape == (3,)


def test_a_mistyped_data_root_leaves_nothing_behind(tmp_path):
    """train, sweep and search against a tracking store, with --data.root or --data-root mistyped: one line
    saying it does not exist (no `data synth` advice for a real corpus's name), and no experiment, run or spool;
    a root named like a synthetic corpus gets the `data synth` command."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/store.db"
    env = {"MLFLOW_TRACKING_URI": uri}
    typo = tmp_path / "data" / "voxcelbe"
    for flag in ("--data.root", "--data-root"):
        for cmd in (["train", "--preset", "tiny", "--out", tmp_path / "t"],
                    ["sweep", "--grid", "demo", "--out", tmp_path / "s"],
                    ["search", "--preset", "tiny", "--n-trials", "1", "--out", tmp_path / "q"]):
            proc = run_cli(*cmd, flag, typo, env=env)
            assert_one_line_error(proc, f"data root {typo} does not exist; check --data.root")
            assert "data synth" not in proc.stderr, proc.stderr
    assert not any((tmp_path / d).exists() for d in ("t", "s", "q"))
    if (tmp_path / "store.db").exists():
        client = mlflow.MlflowClient(uri)
        assert [e.name for e in client.search_experiments()] in ([], ["Default"])
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    proc = run_cli("train", "--preset", "tiny", "--out", tmp_path / "t", "--data-root", tmp_path / "demo", env=env)
    assert_one_line_error(proc, f"create it with `svbench data synth --out {tmp_path / 'demo'} --size demo`")
