import torch

from bench.data.audio import load_audio
from bench.data.features import Fbank, reference_fbank
from bench.data.manifest import read_manifest


def test_batched_fbank_equals_kaldi_per_utterance(tiny_corpus):
    df = read_manifest(tiny_corpus / "eval.csv").head(6)
    wavs = [torch.from_numpy(load_audio(tiny_corpus / p)) for p in df["path"]]
    lengths = torch.tensor([w.shape[0] for w in wavs])
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    fb = Fbank(mean_norm=False)
    out = fb(batch, lengths)
    for i, w in enumerate(wavs):
        ref = reference_fbank(w)
        n = ref.shape[0]
        assert fb.num_frames(int(lengths[i])) == n
        # log-mel: an absolute error is a relative energy error. float32 FFTs of different batch
        # shapes differ by up to ~4e-5 relative in low-energy bins (seen on an AVX2-only AMD EPYC);
        # a real defect (window, mel edges, dither, preemphasis) is off by orders more, and on average.
        diff = torch.abs(out[i, :n] - ref)
        assert diff.max().item() < 1e-3
        assert diff.mean().item() < 1e-5


def test_mean_norm_uses_valid_frames_only(tiny_corpus):
    df = read_manifest(tiny_corpus / "eval.csv").head(2)
    wavs = [torch.from_numpy(load_audio(tiny_corpus / p)) for p in df["path"]]
    lengths = torch.tensor([w.shape[0] for w in wavs])
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    fb = Fbank(mean_norm=True)
    out = fb(batch, lengths)
    for i, w in enumerate(wavs):
        ref = reference_fbank(w)
        ref = ref - ref.mean(dim=0, keepdim=True)
        n = ref.shape[0]
        assert torch.allclose(out[i, :n], ref, atol=1e-4)
        assert torch.all(out[i, n:] == 0)


def test_fbank_rejects_too_short():
    import pytest

    with pytest.raises(ValueError):
        Fbank()(torch.zeros(1, 100))
