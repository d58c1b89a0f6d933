"""Constrained decoding with llguidance: each sequence carries its own grammar matcher,
and at every step the tokens its grammar forbids are masked out of its logits, so the
output always parses (e.g. as JSON of a given schema).

The tokenizer table llguidance needs costs ~1 s to build; it is built once per driver,
on the first constrained request.
"""

from __future__ import annotations

import json
from copy import copy
from typing import Any

import torch

from llmos.kernel.errors import InvalidRequest

_BITS = torch.arange(32, dtype=torch.int32)
# One line, with the spacing models have seen most: free whitespace lets a small model
# wander into newlines until max_tokens cuts the object short. A schema's own
# "x-guidance" settings override these.
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Grammars:
    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
        self._text_tokenizer = tokenizer  # transformers' fast tokenizer or drivers/tokenizer.py's
        self.vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._tokenizer: Any = None

    def _ll_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from llguidance import LLTokenizer

            backend = getattr(self._text_tokenizer, "backend_tokenizer", None)  # the Rust tokenizer both wrap
            if backend is None:
                raise InvalidRequest("constrained decoding needs a fast (tokenizers) tokenizer; this model has none")
            backend = copy(backend)  # as llguidance.hf serializes it: without padding or truncation
            backend.no_padding()
            backend.no_truncation()
            self._tokenizer = LLTokenizer(backend.to_str(), n_vocab=self.vocab_size, eos_token=self._eos_ids)
        return self._tokenizer

    def json_matcher(self, schema: dict[str, Any]) -> Any:
        """A fresh matcher for JSON that follows `schema`; InvalidRequest if it is not usable."""
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=COMPACT_JSON)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"json_schema is not a JSON schema object: {exc}") from None
        error = LLMatcher.validate_grammar(grammar, self._ll_tokenizer())
        if error:
            raise InvalidRequest(f"json_schema cannot be used for decoding: {error}")
        return LLMatcher(self._ll_tokenizer(), grammar, log_level=0)

    def allowed(self, matcher: Any) -> torch.Tensor:
        """(vocab,) bool: the tokens the matcher accepts next."""
        words = torch.empty(((self.vocab_size + 31) // 32,), dtype=torch.int32)
        matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())
        return ((words.unsqueeze(-1) >> _BITS) & 1).reshape(-1)[: self.vocab_size].bool()
