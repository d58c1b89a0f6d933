"""The CPU dtype the transformers driver picks, and how a user overrides it (no model needed)."""

from __future__ import annotations

import pytest
import torch

from llmos.drivers import transformers_driver
from llmos.drivers.transformers_driver import DTYPE_ENV, cpu_dtype, requested_dtype
from llmos.kernel.errors import ConfigError


def test_dtype_is_bfloat16_only_where_the_cpu_multiplies_it(monkeypatch):
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    monkeypatch.setattr(transformers_driver, "cpu_flags", lambda: {"avx2", "fma"})
    assert cpu_dtype() == torch.float32
    monkeypatch.setattr(transformers_driver, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert cpu_dtype() == (torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32)


def test_dtype_can_be_chosen_and_a_bad_choice_is_refused(monkeypatch):
    monkeypatch.setenv(DTYPE_ENV, "float32")
    assert cpu_dtype() == torch.float32
    monkeypatch.setenv(DTYPE_ENV, "BFloat16")
    assert cpu_dtype() == torch.bfloat16
    with requested_dtype("float32"):  # what load_model(..., dtype=) sets: it wins over the variable
        assert cpu_dtype() == torch.float32
    monkeypatch.setenv(DTYPE_ENV, "float8")
    with pytest.raises(ConfigError, match="float8"):
        cpu_dtype()
    with requested_dtype("int4"):  # load_model(..., dtype="int4") is refused the same way (a model test)
        with pytest.raises(ConfigError, match="int4"):
            cpu_dtype()
