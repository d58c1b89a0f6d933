"""What quantizing costs, kept on disk beside a model's weights (drivers/quant_cache.py):
quantized weights read back the same, a measured choice read back instead of measured
again, and anything damaged or made for another machine made or measured anew."""

from __future__ import annotations

import logging

import pytest
import torch

import llmos
from llmos.drivers import model_info, quant, quant_cache
from llmos.drivers.quant import Choice
from llmos.drivers.quant_cache import MeasuredChoice, QuantCache

KINDS = [kind for kind in ("int8", "int4") if quant.available(kind)]
CHOICE = Choice("int8", 16, {"none": {1: 2.0, 2: 2.5}, "int8": {1: 0.5, 2: 0.9}}, few="int4", few_rows=2)
LIMITS = {("int8", 1536, 576): 16, ("int8", 576, 1536): 32}


def weight(rows: int = 256, cols: int = 128) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_weights_are_cached_on_disk_and_read_back_the_same(kind, tmp_path, caplog):
    w = weight()
    first = QuantCache(tmp_path, kind, torch.float32)
    made = first.weight("layers.0.o", w)
    first.save()
    again = QuantCache(tmp_path, kind, torch.float32)
    read = again.weight("layers.0.o", w)
    assert again.made == 0 and torch.equal(read.data, made.data) and torch.equal(read.scales, made.scales)
    again.path.write_bytes(b"not safetensors")  # a damaged cache is made again, with a warning
    damaged = QuantCache(tmp_path, kind, torch.float32)
    assert torch.equal(damaged.weight("layers.0.o", w).data, made.data) and damaged.made == 1
    assert "unreadable" in caplog.text
    assert QuantCache(None, kind, torch.float32).path is None  # no folder: nothing cached


@pytest.mark.skipif("int4" not in KINDS or not quant.compiled_int4(), reason="one int4 layout here")
def test_int4_weights_in_pytorchs_layout_are_not_read_as_the_compiled_kernels(tmp_path):
    w = weight()
    cache = QuantCache(tmp_path, "int4", torch.float32)
    cache.tensors = {"layers.0.o.data": torch.zeros(256, 64, dtype=torch.uint8),  # same bytes a row,
                     "layers.0.o.scales": torch.zeros(4, 256, 2, dtype=torch.bfloat16)}  # PyTorch's scales
    read = cache.weight("layers.0.o", w)
    assert cache.made == 1 and torch.equal(read.data, quant.quantize(w, "int4").data)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_read_back_from_the_cache_start_on_a_64_byte_boundary(kind, tmp_path):
    # torch's int8 kernel reads its weights with aligned vector loads from 4 rows on; read
    # back from a safetensors file they started 8-byte aligned, and 4-8 row calls segfaulted.
    names = [f"layers.{i}.o" for i in range(5)]  # several tensors: the file's offsets differ
    first = QuantCache(tmp_path, kind, torch.float32)
    made = {name: first.weight(name, weight()) for name in names}
    first.save()
    again = QuantCache(tmp_path, kind, torch.float32)
    for name in names:
        read = again.weight(name, weight())
        assert read.data.data_ptr() % quant.ALIGNMENT == 0 and read.scales.data_ptr() % quant.ALIGNMENT == 0
        x = torch.randn(8, read.data.shape[1] * (2 if kind == "int4" else 1), dtype=torch.bfloat16)
        assert torch.equal(read(x), made[name](x))
    odd = torch.zeros(100, dtype=torch.int8)[3:67]
    assert odd.data_ptr() % quant.ALIGNMENT != 0 and quant.aligned(odd).data_ptr() % quant.ALIGNMENT == 0
    assert torch.equal(quant.aligned(odd), odd)


def test_a_measured_choice_is_read_back_as_it_was_saved(tmp_path):
    first = MeasuredChoice(tmp_path, "auto", torch.float32, packed=True)
    assert first.choice is None and first.limits == {}  # nothing kept yet: to be measured
    first.save(CHOICE, LIMITS)
    again = MeasuredChoice(tmp_path, "auto", torch.float32, packed=True)
    assert again.choice == CHOICE and again.limits == LIMITS
    assert again.choice.describe() == "int4 up to 2 rows, then int8 (decode batches up to 16 rows)"
    # Kept per request and per what the kernels raced: another of either is measured anew.
    assert MeasuredChoice(tmp_path, "int8", torch.float32, packed=True).choice is None
    assert MeasuredChoice(tmp_path, "auto", torch.float32, packed=False).choice is None
    assert MeasuredChoice(tmp_path, "auto", torch.bfloat16, packed=True).choice is None
    # What `llmos models show` reads without torch, and `llmos models measure` forgets.
    (tmp_path / quant_cache.CACHE_FOLDER / "choice-odd.json").write_text("{}")  # no name of ours: not listed
    assert model_info.kept_quantizations(tmp_path) == [("auto, float32", CHOICE.describe())]
    assert model_info.forget_quantizations(tmp_path) == 2
    assert MeasuredChoice(tmp_path, "auto", torch.float32, packed=True).choice is None
    assert model_info.kept_quantizations(tmp_path) == []


def test_a_choice_made_on_another_cpu_or_for_other_weights_is_measured_again_and_replaced(tmp_path, monkeypatch):
    MeasuredChoice(tmp_path, "auto", torch.float32, packed=True).save(CHOICE, LIMITS)
    monkeypatch.setattr(quant_cache, "cpu_model", lambda: "another CPU")
    elsewhere = MeasuredChoice(tmp_path, "auto", torch.float32, packed=True)
    assert elsewhere.choice is None
    elsewhere.save(Choice("none", 0, {"none": {1: 1.0}}), {})
    kept = list((tmp_path / quant_cache.CACHE_FOLDER).glob("choice-*.json"))
    assert kept == [elsewhere.path]  # the other CPU's is gone: one a request and dtype
    (tmp_path / "model.safetensors").write_bytes(b"new weights")
    assert MeasuredChoice(tmp_path, "auto", torch.float32, packed=True).choice is None


@pytest.mark.parametrize("content", [b"{not json", b'{"kind": "int2", "max_rows": 4}',
                                     b'{"kind": "int8", "max_rows": -1}',
                                     b'{"kind": "int8", "max_rows": 4, "limits": {"int8:wide": 4}}',
                                     b'{"kind": "int8", "max_rows": 4, "limits": {"int8:576:576": -2}}'])
def test_a_damaged_choice_is_measured_again_with_a_warning(content, tmp_path, caplog):
    saved = MeasuredChoice(tmp_path, "auto", torch.float32, packed=True)
    saved.save(CHOICE, LIMITS)
    saved.path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert MeasuredChoice(tmp_path, "auto", torch.float32, packed=True).choice is None
    assert "unreadable" in caplog.text


def test_without_a_folder_or_a_writable_one_nothing_is_kept_and_nothing_fails(tmp_path):
    loose = MeasuredChoice(None, "auto", torch.float32, packed=True)
    loose.save(CHOICE, LIMITS)
    assert loose.path is None and loose.choice is None
    (tmp_path / quant_cache.CACHE_FOLDER).write_text("a file where the folder would be")
    blocked = MeasuredChoice(tmp_path, "auto", torch.float32, packed=True)
    blocked.save(CHOICE, LIMITS)  # logged, not raised
    assert MeasuredChoice(tmp_path, "auto", torch.float32, packed=True).choice is None


@pytest.mark.model
def test_on_the_real_model_a_second_load_takes_the_kept_choice_without_timing_a_kernel(session_llmos_home,
                                                                                        monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(session_llmos_home))
    first = llmos.load_model("smollm2", quant="auto").driver.engine.runner
    dtype = str(first.model.dtype).removeprefix("torch.")  # (the AVX2 run's float32 choice may sit beside it)
    kept = list((session_llmos_home / "models" / "smollm2" / quant_cache.CACHE_FOLDER).glob(
        f"choice-auto-{dtype}-*.json"))
    assert len(kept) == 1

    def no_timing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a kernel was timed although the choice was kept")

    monkeypatch.setattr(quant, "measure", no_timing)
    monkeypatch.setattr(quant, "row_limit", no_timing)
    second = llmos.load_model("smollm2", quant="auto").driver.engine.runner
    assert second.quantization == first.quantization
    projections = lambda runner: [(p.max_rows, p.few_rows) for layer in runner.layers  # noqa: E731
                                  for p in (layer.qkv, layer.o, layer.gate_up, layer.down)] + [
        (runner.lm_head.max_rows, runner.lm_head.few_rows)]
    assert projections(second) == projections(first)
