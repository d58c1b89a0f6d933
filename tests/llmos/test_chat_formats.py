"""The chat formats `llmos models pull` adds to a converted GGUF that left its own out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.chat_formats import GEMMA, complete_chat

SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]


def gemma_like_folder(folder: Path) -> Path:
    """A converted folder as transformers writes it from Gemma's GGUF: a tokenizer, and a
    generation config naming only the tokenizer's eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate([*SPECIALS, "[UNK]"])},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 1}))
    return folder


def render(folder: Path, messages: list[dict[str, str]]) -> str:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<bos>")
    tokenizer.chat_template = (folder / "chat_template.jinja").read_text()
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_gemma_s_template_and_end_of_turn_are_added_once(tmp_path):
    folder = gemma_like_folder(tmp_path / "gemma")
    complete_chat(folder, GEMMA)
    complete_chat(folder, GEMMA)
    assert (folder / "chat_template.jinja").read_text() == GEMMA.template
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [1, 4]


def test_a_template_of_the_folder_s_own_is_kept(tmp_path):
    folder = gemma_like_folder(tmp_path / "gemma")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    complete_chat(folder, GEMMA)
    assert (folder / "chat_template.jinja").read_text() == "{{ messages }}"


@pytest.mark.parametrize("messages, rendered", [
    # as Google's Gemma 3 template renders them
    ([("user", "Hi")], "<start_of_turn>user\nHi<end_of_turn>\n"),
    ([("system", "Be brief."), ("user", " Hi "), ("assistant", "Hello."), ("user", "Bye")],
     "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
     "<start_of_turn>user\nBye<end_of_turn>\n"),
    # what Google's refuses and llmos's context windows make: several system messages, a
    # summary before the model's turn, turns that do not alternate, tool results
    ([("system", "A"), ("system", "B"), ("user", "U")], "<start_of_turn>user\nA\n\nB\n\nU<end_of_turn>\n"),
    ([("system", "Summary."), ("assistant", "Yes."), ("user", "U"), ("tool", "42")],
     "<start_of_turn>user\nSummary.<end_of_turn>\n<start_of_turn>model\nYes.<end_of_turn>\n"
     "<start_of_turn>user\nU<end_of_turn>\n<start_of_turn>user\n42<end_of_turn>\n"),
])
def test_gemma_s_turns(tmp_path, messages, rendered):
    folder = gemma_like_folder(tmp_path / "gemma")
    complete_chat(folder, GEMMA)
    chat = [{"role": role, "content": content} for role, content in messages]
    assert render(folder, chat) == f"<bos>{rendered}<start_of_turn>model\n"
