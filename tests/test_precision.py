import warnings

import pytest
import torch

from bench.errors import BenchError
from bench.training.precision import autocast, cpu_has_native_bf16, warn_emulated_bf16

CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 avx2 fma {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("extra, expected", [("", False), ("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True)])
def test_native_bf16_from_cpu_flags(tmp_path, extra, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(vendor="AuthenticAMD", extra=extra))
    assert cpu_has_native_bf16(info) is expected


def test_unreadable_cpu_flags_say_unknown(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_has_native_bf16(tmp_path / "noflags") is None


def test_bf16_on_this_cpu_warns_exactly_when_emulated():
    warn_emulated_bf16.cache_clear()
    cpu = torch.device("cpu")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with autocast(cpu, "bf16"):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    emulated = [w for w in seen if "emulated" in str(w.message)]
    assert len(emulated) == (1 if cpu_has_native_bf16() is False else 0)


def test_precision_names():
    cpu = torch.device("cpu")
    with autocast(cpu, "fp32"), autocast(cpu, "none"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(BenchError, match="fp16 inference needs a CUDA GPU"):
        autocast(cpu, "fp16", inference=True)
    with pytest.raises(BenchError, match="unknown precision"):
        autocast(cpu, "int4")
