"""Converting a GGUF file the user names (not only one a package ships)."""

from __future__ import annotations

import pytest

from llmos.drivers.errors import ModelUnavailable
from llmos.drivers.weights import convert_gguf


def test_a_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="no such GGUF file"):
        convert_gguf(tmp_path / "nothing.gguf", tmp_path / "cache")


def test_a_file_that_is_no_gguf_is_a_clear_error_and_leaves_no_cache(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelUnavailable, match="cannot de-quantize this GGUF"):
        convert_gguf(junk, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
