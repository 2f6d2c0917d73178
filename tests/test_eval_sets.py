"""Test sets beside VoxCeleb: a synthetic list exported as CN-Celeb (FLAC) and as a Kaldi data dir, added back
with `svbench data add-eval`, scores as in VoxCeleb form; multi-file enrolment; one-line errors per form."""

import shutil

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from bench.config import load_config
from bench.data.eval_sets import add_eval_set
from bench.data.manifest import read_manifest
from bench.data.trials import read_trials
from bench.eval.scoring import Scorer, evaluate, load_model

FORMS = ("voxceleb", "cnceleb", "kaldi")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny corpus whose list was written in cnceleb and kaldi form by `data synth --eval-forms` and in
    voxceleb form by `data export-eval`, then added back to it as vx, cn and kd."""
    base = tmp_path_factory.mktemp("forms")
    root = base / "root"
    proc = run_cli("data", "synth", "--out", root, "--size", "tiny", "--seed", "0", "--eval-forms", "cnceleb", "kaldi")
    assert proc.returncode == 0, proc.stderr
    assert f"test half in kaldi form: {root / 'forms' / 'kaldi'}" in proc.stdout
    proc = run_cli("data", "export-eval", "--root", root, "--trials", "synth", "--format", "voxceleb",
                   "--out", root / "forms" / "voxceleb")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("data", "add-eval", "--name", "cn", "--root", root / "forms" / "cnceleb", "--format", "cnceleb",
                   "--out", root)
    assert proc.returncode == 0, proc.stderr
    assert "score it with --data.trials" in proc.stdout
    for form, name in (("voxceleb", "vx"), ("kaldi", "kd")):  # the command's own path is the one above
        add_eval_set(name, root / "forms" / form, form, root)
    return root / "forms", root


def test_a_list_in_cnceleb_and_kaldi_form_scores_as_in_voxceleb_form(exported, tiny_model):
    base, root = exported
    assert sorted(p.name for p in (base / "cnceleb" / "eval" / "test").iterdir())[0].endswith(".flac")
    manifest = read_manifest(root / "eval.csv")
    assert manifest["utt_id"].str.startswith("cn:").sum() > 0 and manifest["utt_id"].str.startswith("kd:").sum() > 0
    model = load_model(tiny_model, torch.device("cpu"))
    cfg = load_config("tiny", {"data.root": str(root), "data.trials": ["synth", "vx", "cn", "kd"],
                               "eval.length_tolerance": 0.0, "eval.bootstrap_resamples": 0})
    res = evaluate(model, cfg, torch.device("cpu"))
    for name in ("vx", "cn", "kd"):  # one file per enrolment: the same trials, the same EER
        assert res[name].n_trials == res["synth"].n_trials
        assert res[name].eer_pct == pytest.approx(res["synth"].eer_pct, abs=1e-6), name
        assert res[name].min_dcf_p01 == pytest.approx(res["synth"].min_dcf_p01, abs=1e-6), name
    assert res["avg"].eer_pct == pytest.approx(res["synth"].eer_pct, abs=1e-6)


def test_several_enrolment_files_are_scored_with_their_mean_normalised_embedding():
    """By hand: the model is the mean of its files' length-normalised (mean-subtracted) embeddings, then
    cosine-scored like any utterance."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 4)).astype(np.float32)
    mean = rng.normal(size=4).astype(np.float32) * 0.1
    scorer = Scorer.build(emb, ["s/e1", "s/e2", "t/x"], mean, enrolments={"s/model": ["s/e1", "s/e2"]})
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    model = unit((unit(emb[0] - mean) + unit(emb[1] - mean)) / 2)
    trials = read_trials_from([(1, "s/model", "t/x"), (0, "s/e1", "t/x")])
    np.testing.assert_allclose(scorer.scores(trials), [model @ unit(emb[2] - mean), unit(emb[0] - mean) @
                                                       unit(emb[2] - mean)], rtol=1e-5)


def read_trials_from(rows):
    from bench.data.trials import TrialList

    return TrialList("x", np.array([r[0] for r in rows], dtype=np.int8), [r[1] for r in rows],
                     [r[2] for r in rows])


def test_cnceleb_enrolment_of_several_files_is_written_and_read(exported, tmp_path):
    base, root = exported
    src = tmp_path / "cn2"
    shutil.copytree(base / "cnceleb", src)
    lists = src / "eval" / "lists"
    first = lists.joinpath("enroll.lst").read_text().splitlines()[0].split()
    speaker = first[0].split("-")[0]
    other = next(p for p in sorted((src / "eval" / "enroll").iterdir())
                 if p.stem.split("-")[0] == speaker and p.stem != first[0])
    with open(lists / "enroll.lst", "a") as fh:  # the first enrolment gets a second file of its speaker
        fh.write(f"{first[0]} enroll/{other.name}\n")
    resampled = sorted((src / "eval" / "test").iterdir())[0]  # one file at 22.05 kHz stereo: decoded once
    import soundfile as sf
    from scipy.signal import resample_poly

    mono, _ = sf.read(str(resampled), dtype="float32")
    sf.write(str(resampled), np.stack([resample_poly(mono, 441, 320)] * 2, axis=1), 22050, format="FLAC")
    proc = run_cli("data", "add-eval", "--name", "cn2", "--root", src, "--format", "cnceleb", "--out", root)
    assert proc.returncode == 0, proc.stderr
    assert "enrolments_of_several_files 1" in proc.stdout and "converted          1" in proc.stdout
    converted = root / "eval_sets" / "cn2" / "test" / f"{resampled.name}.wav"
    made = converted.stat().st_mtime_ns
    again = run_cli("data", "add-eval", "--name", "cn2", "--root", src, "--format", "cnceleb", "--out", root)
    assert again.returncode == 0 and converted.stat().st_mtime_ns == made  # resumable: decoded once
    t = read_trials(root / "trials" / "cn2.txt")
    (model, members), = t.enrolments.items()
    assert model in t.enroll and len(members) == 2 and set(members) <= set(t.utterances)


@pytest.mark.parametrize("form", FORMS)
def test_a_missing_file_or_a_malformed_line_is_one_line_and_writes_nothing(exported, tmp_path, form):
    base, root = exported
    before = (root / "eval.csv").read_bytes()
    broken = tmp_path / form
    shutil.copytree(base / form, broken)
    lists = {"voxceleb": broken / "trials.txt", "cnceleb": broken / "eval" / "lists" / "trials.lst",
             "kaldi": broken / "trials"}[form]
    args = ["data", "add-eval", "--name", "broken", "--root", broken, "--format", form, "--out", root]
    original = lists.read_text()
    lists.write_text(original + "1 only-two-fields\n")
    assert_one_line_error(run_cli(*args), "line", "malformed")
    lists.write_text(original)
    if form == "kaldi":
        victim = next(iter(broken.joinpath("wav.scp").read_text().split()[1:2]))
        scp = broken / "wav.scp"
        scp.write_text(scp.read_text().replace(victim, str(tmp_path / "gone.wav")))
    else:
        victim = sorted(p for p in broken.rglob("*") if p.suffix in (".wav", ".flac"))[0]
        victim.unlink()
    assert_one_line_error(run_cli(*args), "does not exist")
    assert (root / "eval.csv").read_bytes() == before and not (root / "trials" / "broken.txt").exists()


def test_streamed_scoring_equals_the_whole_matrix_way():
    """Trials scored a chunk at a time, and AS-norm statistics a block of utterances at a time, give the
    whole-matrix scores and EER (benchmarks/streamed_scoring.py measures 10M trials and the memory)."""
    from bench.data.trials import TrialList
    from bench.eval.metrics import verification_metrics

    rng = np.random.default_rng(0)
    n_utts, n_trials, dim = 3000, 400_000, 32
    emb = rng.normal(size=(n_utts, dim)).astype(np.float32)
    mean, cohort = emb[:500].mean(axis=0), rng.normal(size=(300, dim)).astype(np.float32)
    ids = [f"s{i % 200}/u{i}" for i in range(n_utts)]
    e, t = rng.integers(0, n_utts, n_trials), rng.integers(0, n_utts, n_trials)
    labels = (e % 200 == t % 200).astype(np.int8)
    trials = TrialList("big", labels, [ids[i] for i in e], [ids[i] for i in t])
    streamed = Scorer.build(emb, ids, mean, cohort, top_n=50, chunk=4096).scores(trials)
    x = emb - mean
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    c = cohort - mean
    c /= np.linalg.norm(c, axis=1, keepdims=True) + 1e-12
    top = -np.partition(-(x @ c.T), 49, axis=1)[:, :50]  # the whole utterances x cohort matrix
    mu, sd = top.mean(axis=1), top.std(axis=1) + 1e-9
    raw = np.einsum("ij,ij->i", x[e], x[t])  # the whole trials x dimension gathers
    whole = 0.5 * ((raw - mu[e]) / sd[e] + (raw - mu[t]) / sd[t])
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)  # float32 blocks round in the last bits
    eer = [verification_metrics(s, labels)["eer_pct"] for s in (streamed, whole)]
    assert abs(eer[0] - eer[1]) < 1e-9, eer


def test_a_tracked_training_on_several_lists_logs_their_average(exported, tmp_path):
    """VoxCeleb's O/E/H, or any added set, make several lists: the run logs each and their average (which has
    no score file and no DET curve of its own)."""
    from mlflow.tracking import MlflowClient

    base, root = exported
    reduced = base / "cnceleb-reduced"  # a file withdrawn from the release: its trials dropped by --skip-missing
    shutil.copytree(base / "cnceleb", reduced)
    gone = sorted((reduced / "eval" / "test").iterdir())[0]
    gone.unlink()
    summary = add_eval_set("cnr", reduced, "cnceleb", root, skip_missing=True)
    assert summary["skipped_trials"] == sum(f"{gone.stem}." in line for line in
                                            (reduced / "eval" / "lists" / "trials.lst").read_text().splitlines()) > 0
    proc = run_cli("train", "--preset", "tiny", "--data.root", root, "--data.trials", "[synth, cn, cnr]",
                   "--out", tmp_path / "run", "--train.epochs", "1", "--tracking.log_model", "false",
                   "--tracking.experiment", "several-lists")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("several-lists")
    run = client.search_runs([exp.experiment_id])[0]
    m = run.data.metrics
    assert run.data.params["data.skipped_trials.cnr"] == str(summary["skipped_trials"])
    assert "data.skipped_trials.cn" not in run.data.params
    assert m["eer_pct/avg"] == pytest.approx((m["eer_pct/synth"] + m["eer_pct/cn"] + m["eer_pct/cnr"]) / 3)
    assert m["eer_pct/avg/ci_low"] <= m["eer_pct/avg"] <= m["eer_pct/avg/ci_high"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "scores")} == {"scores/synth.txt", "scores/cn.txt",
                                                                                  "scores/cnr.txt"}


def _cnceleb_flac_release(folder, rng):
    """CN-Celeb_flac as released (and as WeSpeaker's and Kaldi's CN-Celeb recipes read it): ``eval/lists`` name
    ``.wav`` files, while ``data/<spk>``, ``eval/enroll`` and ``eval/test`` hold ``.flac`` files, 16 kHz mono;
    each enrolment file is its speaker's segments concatenated, and ``eval/lists/enroll.map`` lists them,
    relative to ``data/``. Trial labels are 1/0."""
    import soundfile as sf

    lists = folder / "eval" / "lists"
    for sub in ("lists", "enroll", "test"):
        (folder / "eval" / sub).mkdir(parents=True, exist_ok=True)
    enroll, enroll_map, trials = [], [], []
    for spk in ("id00800", "id00801"):
        (folder / "data" / spk).mkdir(parents=True)
        segments = []
        for k in range(1, 4):
            audio = rng.standard_normal(8000 + 2000 * k) * 0.1
            sf.write(folder / "data" / spk / f"singing-01-00{k}.flac", audio, 16000)
            segments.append(audio)
        sf.write(folder / "eval" / "enroll" / f"{spk}-enroll.flac", np.concatenate(segments), 16000)
        enroll.append(f"{spk}-enroll enroll/{spk}-enroll.wav")
        enroll_map.append(f"{spk}-enroll " + " ".join(f"{spk}/singing-01-00{k}.wav" for k in range(1, 4)))
        for k in range(2):
            name = f"{spk}-singing-01-00{k + 5}"
            sf.write(folder / "eval" / "test" / f"{name}.flac", rng.standard_normal(16000) * 0.1, 16000)
            for other in ("id00800", "id00801"):
                trials.append(f"{other}-enroll test/{name}.wav {int(other == spk)}")
    (lists / "enroll.lst").write_text("\n".join(enroll) + "\n")
    (lists / "enroll.map").write_text("\n".join(enroll_map) + "\n")
    (lists / "trials.lst").write_text("\n".join(trials) + "\n")


def _empty_root(root):
    import pandas as pd

    from bench.data.manifest import COLUMNS, write_manifest

    root.mkdir()
    write_manifest(pd.DataFrame(columns=COLUMNS), root / "train.csv")  # a data root that holds no test set yet


def test_the_cnceleb_flac_release_is_added_with_its_wav_names_found_by_stem(tmp_path):
    from bench.errors import BenchError

    release, root = tmp_path / "CN-Celeb_flac", tmp_path / "root"
    _empty_root(root)
    _cnceleb_flac_release(release, np.random.default_rng(0))
    summary = add_eval_set("cnceleb", release, "cnceleb", root)
    assert summary["found_by_stem"] == 6 and summary["trials"] == 8 and summary["converted"] == 0
    paths = read_manifest(root / "eval.csv")["path"]
    assert len(paths) == 6 and all(p.endswith(".flac") for p in paths)
    assert read_trials(root / "trials" / "cnceleb.txt").labels.tolist() == [1, 0, 1, 0, 0, 1, 0, 1]
    # a second file with the same stem: ambiguous, one line naming both, the manifest untouched
    before = (root / "eval.csv").read_bytes()
    shutil.copy(release / "eval" / "test" / "id00800-singing-01-005.flac",
                release / "eval" / "test" / "id00800-singing-01-005.m4a")
    with pytest.raises(BenchError, match=r"ambiguous \(id00800-singing-01-005.flac, id00800-singing-01-005.m4a\)"):
        add_eval_set("cnceleb2", release, "cnceleb", root)
    assert (root / "eval.csv").read_bytes() == before


def test_an_embedding_depends_on_its_utterance_alone(exported, tiny_model):
    """A list's embeddings are bit-identical whether it is extracted alone or with other sets of the data root
    (each utterance is cut by its own length and batched in a shape fixed by that length); batched embeddings
    equal batch-1 embeddings of the whole utterance when no frame is cut."""
    from bench.data.audio import load_audio
    from bench.eval.scoring import extract_embeddings, make_fbank

    _, root = exported
    manifest = read_manifest(root / "eval.csv")
    model = load_model(tiny_model, torch.device("cpu"))
    cfg = load_config("tiny", {"data.root": str(root)})
    fbank, cpu = make_fbank(cfg, torch.device("cpu")), torch.device("cpu")
    mine = manifest[manifest["utt_id"].str.startswith("vx:")]
    everything = manifest.sample(frac=1.0, random_state=1)  # other sets, and another order

    def embed(rows, tolerance=0.02):
        return extract_embeddings(model.list_extractor, fbank, rows["utt_id"].tolist(),
                                  [root / p for p in rows["path"]], rows["num_samples"].tolist(), 60000, cpu,
                                  tolerance=tolerance)

    alone, together = embed(mine), embed(everything)
    index = {u: i for i, u in enumerate(everything["utt_id"])}
    assert np.array_equal(alone, together[[index[u] for u in mine["utt_id"]]])
    exact = embed(mine.head(24), tolerance=0.0)
    with torch.no_grad():
        one = np.stack([model.list_extractor(fbank(torch.from_numpy(load_audio(root / p)).unsqueeze(0)))[0].numpy()
                        for p in mine.head(24)["path"]])
    cos = np.sum(exact * one, 1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(one, axis=1))
    assert cos.min() >= 1 - 1e-5, cos.min()


def test_cnceleb_avg_protocol_scores_the_mean_of_the_enroll_map_segments(tmp_path, tiny_model):
    """WeSpeaker's CNC-Eval-Avg: each enrolment is the mean of the length-normalised embeddings of the segments
    enroll.map lists (found by stem: .wav names, .flac files), checked by hand against the scores."""
    from bench.data.trials import read_trials
    from bench.eval.scoring import extract_embeddings, make_fbank

    release, root = tmp_path / "CN-Celeb_flac", tmp_path / "root"
    _empty_root(root)
    _cnceleb_flac_release(release, np.random.default_rng(1))
    summary = add_eval_set("cnavg", release, "cnceleb", root, protocol="avg")
    assert summary["found_by_stem"] == 10 and summary["enrolments_of_several_files"] == 2
    listed = read_trials(root / "trials" / "cnavg.txt")
    assert {len(m) for m in listed.enrolments.values()} == {3}
    model = load_model(tiny_model, torch.device("cpu"))
    cfg = load_config("tiny", {"data.root": str(root), "data.trials": ["cnavg"], "eval.subtract_mean": False,
                               "eval.bootstrap_resamples": 0, "eval.length_tolerance": 0.0})
    evaluate(model, cfg, torch.device("cpu"), tmp_path / "out")
    got = [float(line.split()[1]) for line in (tmp_path / "out" / "scores" / "cnavg.txt").read_text().splitlines()]
    manifest = read_manifest(root / "eval.csv").set_index("utt_id")

    def embedding(utt):
        e = extract_embeddings(model.list_extractor, make_fbank(cfg, torch.device("cpu")), [utt],
                               [manifest.loc[utt, "path"]], [int(manifest.loc[utt, "num_samples"])], 60000,
                               torch.device("cpu"), tolerance=0.0)[0]
        return e / np.linalg.norm(e)

    by_hand = []
    for enroll, test in zip(listed.enroll, listed.test):
        mean = np.mean([embedding(u) for u in listed.enrolments[enroll]], axis=0)
        by_hand.append(float(mean / np.linalg.norm(mean) @ embedding(test)))
    np.testing.assert_allclose(got, by_hand, atol=1e-5)


def test_a_kaldi_dir_with_a_trials_folder_spk2utt_enrolment_and_word_labels(tmp_path):
    """A WeSpeaker-style eval dir (wav.scp, utt2spk, trials/ with two lists) and a Kaldi enrolment dir whose
    spk2utt names the models the trials enrol: every list is added, named by its file's stem."""
    import soundfile as sf

    rng = np.random.default_rng(2)
    test_dir, enroll_dir, root = tmp_path / "eval", tmp_path / "eval_enroll", tmp_path / "root"
    _empty_root(root)
    for d in (test_dir, enroll_dir):
        (d / "wav").mkdir(parents=True)
    scp, u2s, e_scp, e_u2s, spk2utt = [], [], [], [], []
    for spk in ("spkA", "spkB"):
        utts = []
        for k in range(2):
            utt = f"{spk}-e{k}"
            sf.write(enroll_dir / "wav" / f"{utt}.wav", rng.standard_normal(12000) * 0.1, 16000)
            e_scp.append(f"{utt} {enroll_dir / 'wav' / utt}.wav")
            e_u2s.append(f"{utt} {spk}")
            utts.append(utt)
        spk2utt.append(f"{spk}-model {' '.join(utts)}")
        utt = f"{spk}-t0"
        sf.write(test_dir / "wav" / f"{utt}.wav", rng.standard_normal(12000) * 0.1, 16000)
        scp.append(f"{utt} wav/{utt}.wav")  # relative to the dir
        u2s.append(f"{utt} {spk}")
    for d, a, b in ((test_dir, scp, u2s), (enroll_dir, e_scp, e_u2s)):
        (d / "wav.scp").write_text("\n".join(a) + "\n")
        (d / "utt2spk").write_text("\n".join(b) + "\n")
    (enroll_dir / "spk2utt").write_text("\n".join(spk2utt) + "\n")
    (test_dir / "trials").mkdir()
    (test_dir / "trials" / "vox_like.kaldi").write_text("spkA-model spkA-t0 target\nspkA-model spkB-t0 nontarget\n")
    (test_dir / "trials" / "other_list.lst").write_text("spkB-model spkB-t0 true\nspkB-model spkA-t0 false\n")
    proc = run_cli("data", "add-eval", "--name", "kd", "--root", test_dir, "--format", "kaldi", "--out", root,
                   "--enroll-dir", enroll_dir)
    assert proc.returncode == 0, proc.stderr
    assert "score it with --data.trials other_list vox_like" in proc.stdout
    for name, labels in (("vox_like", [1, 0]), ("other_list", [1, 0])):
        t = read_trials(root / "trials" / f"{name}.txt")
        assert t.labels.tolist() == labels and len(t.enrolments) == 1
        (members,) = t.enrolments.values()
        assert len(members) == 2
    (test_dir / "trials" / "other_list.lst").write_text("spkB-model spkB-t0 maybe\n")
    assert_one_line_error(run_cli("data", "add-eval", "--name", "kd", "--root", test_dir, "--format", "kaldi",
                                  "--out", root, "--enroll-dir", enroll_dir), "label 'maybe'", "true/false")


def test_a_kaldi_dir_with_segments_and_a_piped_wav_scp_entry(tmp_path):
    """Kaldi's VoxCeleb2 / SITW / SRE dirs: ``segments`` cut recordings, and a ``wav.scp`` entry may be a command
    whose output is the audio (``sox in.sph -t wav - |``; here ``cat``, sox not being installed). Without
    --allow-pipes that is a one-line error naming the flag; with it the command runs and its output is cut."""
    import soundfile as sf

    from bench.data.audio import load_audio

    rng = np.random.default_rng(3)
    d, root = tmp_path / "sre", tmp_path / "root"
    _empty_root(root)
    d.mkdir()
    rec1, rec2 = rng.standard_normal(40000) * 0.1, rng.standard_normal(32000) * 0.1
    sf.write(d / "rec1.wav", rec1, 16000, subtype="FLOAT")
    sf.write(d / "rec2.flac", rec2, 16000)
    (d / "wav.scp").write_text(f"rec1 cat {d / 'rec1.wav'} |\nrec2 rec2.flac\n")
    (d / "segments").write_text("spkA-s0 rec1 0.0 1.0\nspkA-s1 rec1 1.0 2.25\nspkB-s0 rec2 0.5 1.5\n")
    (d / "utt2spk").write_text("spkA-s0 spkA\nspkA-s1 spkA\nspkB-s0 spkB\n")
    (d / "trials").write_text("spkA-s0 spkA-s1 1\nspkA-s0 spkB-s0 0\n")
    args = ["data", "add-eval", "--name", "sre", "--root", d, "--format", "kaldi", "--out", root]
    assert_one_line_error(run_cli(*args), "--allow-pipes", "line 1", "cat ")
    assert not (root / "eval.csv").exists()
    proc = run_cli(*args, "--allow-pipes")
    assert proc.returncode == 0, proc.stderr
    rows = read_manifest(root / "eval.csv").set_index("utt_id")
    assert rows["num_samples"].sort_index().tolist() == [16000, 20000, 16000]  # spkA-s0, spkA-s1, spkB-s0
    cut = load_audio(rows.loc["sre:spkB/spkB-s0", "path"])
    np.testing.assert_allclose(cut, rec2[8000:24000], atol=1e-3)  # PCM16 on both sides
    first = load_audio(rows.loc["sre:spkA/spkA-s0", "path"])
    np.testing.assert_allclose(first, rec1[:16000], atol=1e-3)
