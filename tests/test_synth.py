import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from bench.data.manifest import read_manifest
from bench.data.synth import generate_corpus
from bench.data.trials import read_trials


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    a = generate_corpus(tmp_path / "a", seed=3, size="tiny", workers=2, progress=False)
    generate_corpus(tmp_path / "b", seed=3, size="tiny", workers=1, progress=False)
    generate_corpus(tmp_path / "c", seed=4, size="tiny", workers=2, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert a.train_speakers == 8


def test_layout_and_trials(tiny_corpus):
    train = read_manifest(tiny_corpus / "train.csv")
    ev = read_manifest(tiny_corpus / "eval.csv")
    assert set(train["speaker"]).isdisjoint(set(ev["speaker"]))
    for rel in ev["utt_id"].head(5):
        spk, sess, name = rel.split("/")
        assert spk.startswith("id") and len(spk) == 7 and name.endswith(".wav") and len(name) == 9
        info = sf.info(str(tiny_corpus / "wav" / rel))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
    trials = read_trials(tiny_corpus / "trials" / "synth.txt")
    assert 0 < trials.labels.sum() < len(trials)
    known = set(ev["utt_id"])
    assert all(u in known for u in trials.utterances)
    # target trials cross sessions
    for lab, e, t in zip(trials.labels, trials.enroll, trials.test):
        if lab == 1:
            assert e.split("/")[0] == t.split("/")[0] and e.split("/")[1] != t.split("/")[1]
        else:
            assert e.split("/")[0] != t.split("/")[0]


@pytest.mark.slow
def test_demo_corpus_summary_and_hard_baseline(tmp_path):
    proc = run_cli("data", "synth", "--out", tmp_path / "demo", "--size", "demo", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "train_speakers     150" in out
    line = [ln for ln in out.splitlines() if ln.startswith("no-training baseline")][0]
    eer = float(line.split("EER ")[1].split("%")[0])
    assert eer >= 20.0, line
    ev = read_manifest(tmp_path / "demo" / "eval.csv")
    assert ev["speaker"].nunique() == 40


def test_audio_is_not_silent_and_varies(tiny_corpus):
    ev = read_manifest(tiny_corpus / "eval.csv")
    x, _ = sf.read(str(tiny_corpus / ev["path"].iloc[0]))
    y, _ = sf.read(str(tiny_corpus / ev["path"].iloc[1]))
    assert np.std(x) > 1e-3 and np.std(y) > 1e-3
    assert not np.array_equal(x[:1000], y[:1000])
