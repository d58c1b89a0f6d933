"""drivers/tokenizer.py: a tokenizer folder read without transformers gives transformers'
own ids, text and rendered chats; folders it cannot promise that for are left to transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmos.drivers.grammar import Grammars
from llmos.drivers.tokenizer import ChatTokenizer, read_tokenizer
from llmos.testing import tiny_tokenizer

TEXTS = ["", "hi", "Hello, world!", "  leading and trailing spaces  ", "tabs\tand\nnewlines\n\n",
         "naïve café — ünïcödé ✓ 中文 😀", "<|im_start|>user\nspecial tokens in text<|im_end|>",
         "numbers 1234567890 and symbols {\"json\": [1, 2.5, null]}", "don't won't it's we're"]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Arr, hello!"}, {"role": "user", "content": "What now?  \n"}],
    [{"role": "user", "content": "naïve café 😀", "name": None}],  # None fields are dropped, as transformers does
]


@pytest.fixture(scope="module")
def smollm2_folder(session_llmos_home: Path) -> Path:
    from llmos.drivers.smollm2 import SOURCE, SPEC
    from llmos.drivers.weights import ensure_cached

    folder = SPEC.cache_folder(session_llmos_home)
    ensure_cached(SOURCE, folder)
    return folder


@pytest.fixture
def folder_copy(smollm2_folder, tmp_path) -> Path:
    """SmolLM2's tokenizer files alone, to edit."""
    copy = tmp_path / "tok"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2_folder / name, copy / name)
    return copy


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_smollm2s_tokenizer_is_read_without_transformers(smollm2_folder):
    assert isinstance(read_tokenizer(smollm2_folder), ChatTokenizer)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_text_are_transformers_own(smollm2_folder, text):
    ours, theirs = read_tokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    assert ours is not None
    for special in (True, False):
        ids = ours.encode(text, add_special_tokens=special)
        assert ids == theirs.encode(text, add_special_tokens=special)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("chat", CHATS)
def test_chats_render_and_tokenize_as_transformers_does(smollm2_folder, chat):
    ours, theirs = read_tokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    assert ours is not None
    for prompt in (True, False):
        assert (ours.apply_chat_template(chat, add_generation_prompt=prompt, tokenize=False)
                == theirs.apply_chat_template(chat, add_generation_prompt=prompt, tokenize=False))
        assert (ours.apply_chat_template(chat, add_generation_prompt=prompt, tokenize=True, return_dict=True)["input_ids"]
                == list(theirs.apply_chat_template(chat, add_generation_prompt=prompt, tokenize=True,
                                                   return_dict=True)["input_ids"]))


def test_special_tokens_are_transformers_own(smollm2_folder):
    ours, theirs = read_tokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    assert ours is not None
    assert (ours.eos_token, ours.eos_token_id, ours.bos_token_id, ours.pad_token_id) == \
        (theirs.eos_token, theirs.eos_token_id, theirs.bos_token_id, theirs.pad_token_id)
    assert ours.convert_tokens_to_ids("<|im_end|>") == theirs.convert_tokens_to_ids("<|im_end|>")
    assert len(ours) == len(theirs)


def test_a_template_sees_what_transformers_gives_it(folder_copy):
    (folder_copy / "chat_template.jinja").write_text(
        "{{ bos_token }}|{{ eos_token }}|{{ messages | length }}|{{ messages[0] | tojson }}|"
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}|"
        "{{ dict(a=1) | tojson }}|{% generation %}{{ add_generation_prompt }}{% endgeneration %}|"
        "{{ messages[0].reasoning_content }}|{{ extra }}")
    chat = [{"role": "assistant", "content": "<b>ok</b> ✓", "thinking": "hmm", "tool_calls": None}]
    ours, theirs = read_tokenizer(folder_copy), AutoTokenizer.from_pretrained(folder_copy)
    assert ours is not None
    rendered = ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, extra="more")
    assert rendered == theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, extra="more")
    assert "<b>ok</b> ✓" in rendered and "tool_calls" not in rendered


def test_a_template_that_raises_is_a_template_error(folder_copy):
    import jinja2

    (folder_copy / "chat_template.jinja").write_text("{{ raise_exception('only user turns') }}")
    ours = read_tokenizer(folder_copy)
    assert ours is not None
    with pytest.raises(jinja2.exceptions.TemplateError, match="only user turns"):
        ours.apply_chat_template([{"role": "system", "content": "x"}])


def test_a_template_cannot_reach_python_internals(folder_copy):
    import jinja2

    (folder_copy / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    ours = read_tokenizer(folder_copy)
    assert ours is not None
    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    (folder_copy / "chat_template.jinja").write_text("{% set ns = namespace() %}{% set ns._x = 1 %}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        read_tokenizer(folder_copy).apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def test_bad_chats_are_typed_errors(smollm2_folder):
    ours = read_tokenizer(smollm2_folder)
    assert ours is not None
    with pytest.raises(ValueError, match="empty conversation"):
        ours.apply_chat_template([])
    with pytest.raises(TypeError, match="dicts"):
        ours.apply_chat_template(["just a string"])
    with pytest.raises(TypeError, match="JSON data"):
        ours.apply_chat_template([{"role": "user", "content": object()}])


@pytest.mark.parametrize("changes", [
    {"tokenizer_class": "LlamaTokenizer"},  # a class of its own may rebuild the tokenizer
    {"add_bos_token": True},  # transformers rebuilds the post-processor
    {"split_special_tokens": True},
    {"add_prefix_space": True},
    {"legacy": False},  # an unknown setting
    {"bos_token": "<s>"},  # a special token the backend lacks: transformers would add it
    {"chat_template": [{"name": "default", "template": "x"}, {"name": "tool_use", "template": "y"}]},
    {"added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": False}}},
])
def test_folders_transformers_would_change_are_left_to_transformers(folder_copy, changes):
    if "chat_template" in changes:
        (folder_copy / "chat_template.jinja").unlink()
    _edit_config(folder_copy, **changes)
    assert read_tokenizer(folder_copy) is None


def test_a_folder_without_its_files_is_left_to_transformers(folder_copy):
    (folder_copy / "tokenizer_config.json").write_text("not json")
    assert read_tokenizer(folder_copy) is None
    (folder_copy / "tokenizer_config.json").unlink()
    assert read_tokenizer(folder_copy) is None


def test_a_tokenizer_saved_by_transformers_reads_back_the_same(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    ours, theirs = read_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert ours is not None and ours.chat_template is None
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text)
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template(CHATS[0])


def test_constrained_decoding_takes_either_tokenizer(smollm2_folder):
    """llguidance is given the same tokenizer JSON from ours as from transformers'."""
    ours, theirs = read_tokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    masks = []
    for tokenizer in (ours, theirs):
        grammars = Grammars(tokenizer, 49152, frozenset({2}))
        masks.append(grammars.allowed(grammars.json_matcher(schema)))
    assert masks[0].equal(masks[1]) and 0 < int(masks[0].sum()) < 49152
