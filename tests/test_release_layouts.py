"""Test sets as their releases lay them out, beyond CN-Celeb and Kaldi (tests/test_eval_sets.py): a Mozilla Common
Voice release (CommonBench's source: MP3 clips, speakers by ``client_id`` in its TSV files, donors who withdrew),
kept as MP3 and decoded while embeddings are extracted; VoxCeleb1 O/E/H added on one root, extracted once per file;
the VoxCeleb corpus root given instead of its ``wav/`` folder."""

import hashlib

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import assert_one_line_error, run_cli

from bench.config import load_config
from bench.data.eval_sets import add_eval_set
from bench.data.manifest import COLUMNS, read_manifest, write_manifest
from bench.data.trials import read_trials
from bench.eval.scoring import evaluate, extract_embeddings, load_model, make_fbank

# validated.tsv / train.tsv / dev.tsv / test.tsv / other.tsv / invalidated.tsv of a Common Voice 17 release
CV_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
             "gender", "accents", "variant", "locale", "segment"]


def _mp3(path, audio_16k, rate=48000):
    """A clip as Common Voice ships it: MP3, mono, at 48 kHz (encoded with PyAV's LAME)."""
    frame = av.AudioFrame.from_ndarray(audio_16k.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = 16000
    up = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp3", rate=rate)
        stream.layout = "mono"
        for f in [*up.resample(frame), *up.resample(None)]:
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _common_voice_release(folder, corpus, speakers=4, clips=3):
    """``cv-corpus-17.0/fr/``: ``clips/common_voice_fr_<n>.mp3`` and the TSVs (client_id = 128 hex digits, a
    sentence with a double quote, as the release's sentences have), ``reported.tsv`` and ``clip_durations.tsv``
    without speakers. Audio: the tiny corpus's test utterances, so a trained model tells the donors apart.
    Returns (clip name -> donor, clips by donor)."""
    lang = folder / "fr"
    (lang / "clips").mkdir(parents=True)
    manifest = read_manifest(corpus / "eval.csv")
    by_donor, rows = {}, []
    for k, (spk, group) in enumerate(manifest.groupby("speaker", sort=True)):
        if k == speakers:
            break
        client = hashlib.sha512(spk.encode()).hexdigest()
        for j, rel in enumerate(group["path"].head(clips)):
            name = f"common_voice_fr_{40000 + 10 * k + j}.mp3"
            _mp3(lang / "clips" / name, sf.read(corpus / rel, dtype="float32")[0])
            by_donor.setdefault(client, []).append(name)
            rows.append([client, name, f"s{k}{j}", 'Il dit "bonjour".', "", "2", "0", "", "", "", "", "fr", ""])
    tsv = pd.DataFrame(rows, columns=CV_HEADER)
    for part, sub in (("validated", tsv), ("train", tsv.iloc[::2]), ("test", tsv.iloc[1::2]), ("other", tsv.iloc[:0])):
        sub.to_csv(lang / f"{part}.tsv", sep="\t", index=False, quoting=3)
    (lang / "reported.tsv").write_text("sentence_id\tsentence\tlocale\treason\ns00\tx\tfr\tdifficult-pronounce\n")
    (lang / "clip_durations.tsv").write_text("clip\tduration[ms]\n" + "".join(f"{r[1]}\t1000\n" for r in rows))
    return by_donor


def _comparisons(by_donor):
    """(label, enroll, test): each donor's first clip against every other clip."""
    out = []
    for client, names in by_donor.items():
        for other, others in by_donor.items():
            out += [(int(client == other), names[0], t) for t in others if t != names[0]]
    return out


def _empty_root(root):
    root.mkdir()
    write_manifest(pd.DataFrame(columns=COLUMNS), root / "train.csv")


@pytest.fixture(scope="module")
def common_voice(tiny_corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("cv")
    release = base / "cv-corpus-17.0-2024-03-15"
    by_donor = _common_voice_release(release, tiny_corpus)
    return base, release, by_donor


def test_a_common_voice_release_is_scored_from_its_mp3_without_a_copy(common_voice, tiny_model, tmp_path):
    """The comparison list in either order (detected), clips named by file name or by path: kept as MP3 (nothing
    written under the data root) and scored exactly as a decoded WAV copy of the same clips."""
    base, release, by_donor = common_voice
    lists = tmp_path / "lists"
    lists.mkdir()
    trials = _comparisons(by_donor)
    (lists / "cvlast.txt").write_text("".join(f"{e} fr/clips/{t} {'target' if lab else 'nontarget'}\n"
                                              for lab, e, t in trials))
    (lists / "cvfirst.txt").write_text("".join(f"{lab} {e} {t}\n" for lab, e, t in trials))
    root = tmp_path / "root"
    _empty_root(root)
    proc = run_cli("data", "add-eval", "--name", "cv", "--format", "commonvoice", "--root", release,
                   "--trials", lists, "--out", root)
    assert proc.returncode == 0, proc.stderr
    assert "decoded_when_read  12" in proc.stdout and "converted          0" in proc.stdout
    assert not (root / "eval_sets").exists()
    manifest = read_manifest(root / "eval.csv")
    assert manifest["path"].str.endswith(".mp3").all() and manifest["speaker"].str.len().max() == len("cv:") + 16
    add_eval_set("cvcopy", release / "fr", "commonvoice", root, trials=lists / "cvfirst.txt", no_copy=False)
    assert len(list((root / "eval_sets" / "cvcopy").rglob("*.wav"))) == 12
    model = load_model(tiny_model, torch.device("cpu"))
    cfg = load_config("tiny", {"data.root": str(root), "data.trials": ["cvlast", "cvfirst", "cvcopy"],
                               "eval.bootstrap_resamples": 0})
    res = evaluate(model, cfg, torch.device("cpu"))
    assert res["cvfirst"].n_trials == res["cvlast"].n_trials == len(trials)
    for name in ("cvlast", "cvcopy"):
        assert res[name].eer_pct == pytest.approx(res["cvfirst"].eer_pct, abs=1e-6), name
        assert res[name].min_dcf_p01 == pytest.approx(res["cvfirst"].min_dcf_p01, abs=1e-6), name


def test_withdrawn_clips_are_refused_or_skipped_with_their_count(common_voice, tmp_path):
    """A donor's clip gone from the clips and the TSVs (withdrawn) while the list still names it: refused with
    one line that names --skip-missing and writes nothing; with it, its trials are dropped, counted, printed and
    recorded beside the list, and the reduced list's digest differs from the same trials unreduced."""
    import shutil

    _, release, by_donor = common_voice
    mine = tmp_path / "cv"
    shutil.copytree(release, mine)
    gone = by_donor[next(iter(by_donor))][1]
    (mine / "fr" / "clips" / gone).unlink()
    for tsv in (mine / "fr").glob("*.tsv"):
        tsv.write_text("".join(line for line in tsv.read_text().splitlines(keepends=True) if gone not in line))
    trials = _comparisons(by_donor)
    (tmp_path / "list.txt").write_text("".join(f"{e} {t} {lab}\n" for lab, e, t in trials))
    root = tmp_path / "root"
    _empty_root(root)
    before = sorted(p.name for p in root.iterdir())
    proc = run_cli("data", "add-eval", "--name", "cvr", "--format", "commonvoice", "--root", mine,
                   "--trials", tmp_path / "list.txt", "--out", root)
    assert_one_line_error(proc, gone, "does not exist", "--skip-missing")
    assert sorted(p.name for p in root.iterdir()) == before
    proc = run_cli("data", "add-eval", "--name", "cvr", "--format", "commonvoice", "--root", mine,
                   "--trials", tmp_path / "list.txt", "--out", root, "--skip-missing")
    assert proc.returncode == 0, proc.stderr
    dropped = sum(gone in (e, t) for _, e, t in trials)
    assert f"{dropped} trial(s) needed absent files and were dropped" in proc.stdout
    reduced = read_trials(root / "trials" / "cvr.txt")
    assert reduced.skipped_trials == dropped and len(reduced) == len(trials) - dropped
    same = read_trials(root / "trials" / "cvr.txt")
    same.skipped_trials = 0
    assert same.digest() != reduced.digest()


def test_a_malformed_comparison_list_or_a_clip_without_a_donor_is_one_line(common_voice, tmp_path):
    _, release, by_donor = common_voice
    root = tmp_path / "root"
    _empty_root(root)
    a, b = by_donor[next(iter(by_donor))][:2]
    for text, fragment in ((f"{a} {b}\n", "line 1 is malformed"), (f"{a} {b} 2\n", "no label first or last"),
                           (f"1 {a} {b}\n{a} {b} 1\n", "line 2 has label")):
        (tmp_path / "l.txt").write_text(text)
        proc = run_cli("data", "add-eval", "--name", "bad", "--format", "commonvoice", "--root", release,
                       "--trials", tmp_path / "l.txt", "--out", root)
        assert_one_line_error(proc, fragment)
    stray = release / "fr" / "clips" / "common_voice_fr_1.mp3"
    stray.write_bytes((release / "fr" / "clips" / a).read_bytes())
    try:
        (tmp_path / "l.txt").write_text(f"1 {a} fr/clips/common_voice_fr_1.mp3\n")
        proc = run_cli("data", "add-eval", "--name", "bad", "--format", "commonvoice", "--root", release,
                       "--trials", tmp_path / "l.txt", "--out", root)
        assert_one_line_error(proc, "in none of the release's TSV files")
    finally:
        stray.unlink()
    assert not (root / "eval.csv").exists()


def _voxceleb1(folder, corpus):
    """VoxCeleb1 as released: ``wav/idXXXXX/<video>/00001.wav``; O, E and H (cleaned) name the same files."""
    manifest = read_manifest(corpus / "eval.csv")
    manifest = manifest[manifest["speaker"].isin(sorted(manifest["speaker"].unique())[:8])].groupby("speaker").head(3)
    rels = []
    for i, (spk, rel) in enumerate(zip(manifest["speaker"], manifest["path"])):
        dst = folder / "wav" / f"id1{i // 3:04d}" / "vid" / f"{i:05d}.wav"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((corpus / rel).read_bytes())
        rels.append(dst.relative_to(folder / "wav").as_posix())
    pairs = [(int(a.split("/")[0] == b.split("/")[0]), a, b) for a in rels[::3] for b in rels if b not in rels[::3]]
    for name, part in (("veri_test2.txt", pairs[:64]), ("list_test_all2.txt", pairs), ("list_test_hard2.txt",
                                                                                         pairs[32:])):
        (folder / name).write_text("".join(f"{lab} {a} {b}\n" for lab, a, b in part))
    return rels


def test_voxceleb1_o_e_h_on_one_root_extract_each_shared_file_once(tiny_corpus, tiny_model, tmp_path):
    """--root is the corpus root (the lists' paths are under wav/); three sets over the same files: every
    file's embedding is extracted once (the embedder counts the rows it is given), and each list's scores equal
    those of the list scored alone on its own root."""
    release = tmp_path / "VoxCeleb1"
    rels = _voxceleb1(release, tiny_corpus)
    root, alone = tmp_path / "root", tmp_path / "alone"
    _empty_root(root)
    _empty_root(alone)
    for name, listed in (("vox1-O", "veri_test2.txt"), ("vox1-E", "list_test_all2.txt"),
                         ("vox1-H", "list_test_hard2.txt")):
        add_eval_set(name, release, "voxceleb", root, trials=release / listed)
    add_eval_set("vox1-H", release / "wav", "voxceleb", alone, trials=release / "list_test_hard2.txt")
    model = load_model(tiny_model, torch.device("cpu"))
    rows = read_manifest(root / "eval.csv")
    assert len(rows) > len(rels)  # O, E and H: several ids for most files

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.rows = inner, 0

        def forward(self, feats):
            self.rows += feats.shape[0]
            return self.inner(feats)

    counting = Counting(model.list_extractor)
    cfg = load_config("tiny", {"data.root": str(root), "eval.batch_utts": 1})
    emb = extract_embeddings(counting, make_fbank(cfg, torch.device("cpu")), rows["utt_id"].tolist(),
                             [root / p for p in rows["path"]], rows["num_samples"].tolist(), 60000,
                             torch.device("cpu"), batch_utts=1)
    assert counting.rows == len(rels) < len(rows)
    by_path = {}
    for e, path in zip(emb, rows["path"]):
        assert np.array_equal(by_path.setdefault(path, e), e)
    together = evaluate(model, load_config("tiny", {"data.root": str(root), "eval.bootstrap_resamples": 0}),
                        torch.device("cpu"))
    single = evaluate(model, load_config("tiny", {"data.root": str(alone), "eval.bootstrap_resamples": 0}),
                      torch.device("cpu"))
    assert together["vox1-H"].eer_pct == single["vox1-H"].eer_pct
    assert together["vox1-H"].min_dcf_p01 == single["vox1-H"].min_dcf_p01
