"""A Hugging Face tokenizer folder read with the `tokenizers` library and jinja2 alone.

Loading a tokenizer through transformers costs ~2 s of a cold start: `AutoTokenizer` imports
transformers and, through its type checks, torch's distributed tensors. The engine needs
little of it: text to ids, ids to text, the chat template, the end-of-sequence token and,
for constrained decoding, the tokenizer's JSON. `ChatTokenizer` is that, computing what
transformers' fast tokenizer computes (tests/drivers/test_tokenizer.py holds them equal).

`read_tokenizer` returns None for a folder whose tokenizer_config.json asks for anything
transformers would change the tokenizer for (a tokenizer class of its own, BOS/EOS added by
the config, tokens the backend lacks, ...): the caller loads it through transformers then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# The classes that take tokenizer.json as it is (transformers 5's generic backend, and 4's).
GENERIC_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
# tokenizer_config.json keys that change nothing here (bookkeeping, or read below).
HARMLESS_KEYS = frozenset({
    "backend", "tokenizer_class", "is_local", "local_files_only", "model_max_length", "padding_side",
    "truncation_side", "model_input_names", "name_or_path", "clean_up_tokenization_spaces", "chat_template",
    "added_tokens_decoder", "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
    "mask_token", "extra_special_tokens", "additional_special_tokens", "split_special_tokens",
    "spaces_between_special_tokens", "errors", "add_prefix_space",
})
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # as transformers aliases them


class ChatTokenizer:
    """Tokenizes as transformers' fast tokenizer of the same folder does (the part of its API
    llmos uses: encode, decode, apply_chat_template and the special tokens)."""

    def __init__(self, backend: Tokenizer, special: Mapping[str, str], template: str | None) -> None:
        backend.no_padding()
        backend.no_truncation()
        self.backend_tokenizer = backend
        self.special_tokens_map = dict(special)  # what chat templates see as bos_token, eos_token, ...
        self.chat_template = template

    # -- special tokens ----------------------------------------------------------------------
    def _special(self, name: str) -> str | None:
        return self.special_tokens_map.get(name)

    def _special_id(self, name: str) -> int | None:
        token = self._special(name)
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def eos_token(self) -> str | None:
        return self._special("eos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend_tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    # -- text ----------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- chats ---------------------------------------------------------------------------------
    def apply_chat_template(self, conversation: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                            tokenize: bool = True, return_dict: bool = True, tools: list[dict[str, Any]] | None = None,
                            documents: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        """The chat rendered by the folder's template, as transformers renders it; its ids
        ({"input_ids": ids} with return_dict) unless tokenize is False."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        messages = _aliased([_without_none(message) for message in conversation])
        rendered = self._template.render(messages=messages, tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt,
                                         **{**self.special_tokens_map, **kwargs})
        if not tokenize:
            return rendered
        ids = self.encode(rendered, add_special_tokens=False)  # the template writes its own BOS
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids

    @cached_property
    def _template(self) -> jinja2.Template:
        assert self.chat_template is not None
        return _environment().from_string(self.chat_template)


def read_tokenizer(folder: Path) -> ChatTokenizer | None:
    """The folder's tokenizer, if it is one ChatTokenizer reads as transformers would."""
    config = _tokenizer_config(folder)
    if config is None or not (folder / "tokenizer.json").is_file():
        return None
    if (folder / "additional_chat_templates").exists():  # named templates: transformers picks among them
        return None
    try:
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception on a file it cannot read
        return None
    special = {name: _content(config[name]) for name in NAMED_SPECIAL_TOKENS if config.get(name) is not None}
    if not _as_is(config, backend, special):
        return None
    template = _template_of(folder, config)
    if template is False:
        return None
    return ChatTokenizer(backend, special, template or None)


def _tokenizer_config(folder: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _content(token: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
    return str(token["content"]) if isinstance(token, dict) else str(token)


def _as_is(config: dict[str, Any], backend: Tokenizer, special: dict[str, str]) -> bool:
    """Whether transformers would use tokenizer.json unchanged for this config."""
    if set(config) - HARMLESS_KEYS or config.get("tokenizer_class", "TokenizersBackend") not in GENERIC_CLASSES:
        return False
    if config.get("split_special_tokens") or config.get("add_prefix_space"):
        return False
    if config.get("clean_up_tokenization_spaces") and type(backend.model).__name__ != "BPE":
        return False  # transformers cleans up spaces after decoding, except for BPE models
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    added = backend.get_added_tokens_decoder()
    specials = {token.content for token in added.values() if token.special}
    if not {*special.values(), *map(_content, extra)} <= specials:  # transformers would add them
        return False
    for index, token in (config.get("added_tokens_decoder") or {}).items():
        mine = added.get(int(index))
        if mine is None or mine.content != token.get("content") or mine.special != token.get("special", False):
            return False
    return True


def _template_of(folder: Path, config: dict[str, Any]) -> str | bool:
    """chat_template.jinja, else the config's template; "" for none, False for several."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = config.get("chat_template")
    if template is None:
        return ""
    return template if isinstance(template, str) else False


def _without_none(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as plain data without its None fields, as transformers hands templates one."""
    if not isinstance(message, Mapping):
        raise TypeError(f"Chat messages should be dicts, but got {message!r}.")
    return {str(key): _plain(value) for key, value in message.items() if value is not None}


def _plain(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    raise TypeError(f"a chat message holds {type(value).__name__}, not JSON data")


def _aliased(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    aliased = []
    for message in messages:
        reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
        aliased.append(message if reasoning is None else {"thinking": reasoning, **message,
                                                          "reasoning_content": reasoning})
    return aliased


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: its body as it is (transformers marks the span
    for assistant masks, which llmos never asks for)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers' filter: no HTML escaping, unlike jinja's own tojson
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, and nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace without underscore attributes (transformers refuses them too)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's own signature trick: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox transformers renders chat templates in (templates are untrusted code)."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_Generation, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _Dict()
    environment.globals["namespace"] = _Namespace
    return environment
