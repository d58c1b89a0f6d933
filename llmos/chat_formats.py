"""Chat formats that a GGUF file leaves out and `llmos models pull` puts back.

A GGUF may carry no chat template (gemma3-270m's has none: it is the pretrained model's
file), and the generation config transformers writes from it names only the tokenizer's eos,
not the token that ends a chat turn; without them the model cannot `chat` and replies would
run on past their turn. The folder gets its family's format once, after conversion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmos.drivers.model_info import chat_template

TEMPLATE_FILE = "chat_template.jinja"  # where transformers reads a folder's template first
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class ChatFormat:
    template: str  # a Jinja chat template, as tokenizers' apply_chat_template renders it
    end_of_turn: str  # the token that closes the model's turn: one more eos for generation


# Gemma's turns (Google's Gemma 3 template for user/model exchanges, rendered the same), made
# lenient for llmos's context windows: every system message (pinned entries, a summary) is
# folded into the next user turn, and turns need not alternate (a tool result is a user turn).
GEMMA_TEMPLATE = r"""{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}
    {%- set ns.system = ns.system + (message['content'] | trim) + '\n\n' -%}
  {%- elif message['role'] == 'assistant' -%}
    {%- if ns.system -%}{{- '<start_of_turn>user\n' + (ns.system | trim) + '<end_of_turn>\n' -}}{%- endif -%}
    {{- '<start_of_turn>model\n' + (message['content'] | trim) + '<end_of_turn>\n' -}}
    {%- set ns.system = '' -%}
  {%- else -%}
    {{- '<start_of_turn>user\n' + ns.system + (message['content'] | trim) + '<end_of_turn>\n' -}}
    {%- set ns.system = '' -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.system -%}{{- '<start_of_turn>user\n' + (ns.system | trim) + '<end_of_turn>\n' -}}{%- endif -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""
GEMMA = ChatFormat(GEMMA_TEMPLATE, "<end_of_turn>")


def complete_chat(folder: Path, chat: ChatFormat) -> None:
    """Give a converted model folder what its GGUF left out: `chat`'s template, unless it has
    a template of its own, and `chat.end_of_turn` among generation_config.json's eos ids.
    Doing it twice changes nothing."""
    if chat_template(folder) is None:
        (folder / TEMPLATE_FILE).write_text(chat.template)
    _add_eos(folder, _token_id(folder, chat.end_of_turn))


def _token_id(folder: Path, token: str) -> int:
    from tokenizers import Tokenizer

    found = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(token)
    if found is None:
        raise ValueError(f"{folder}: its tokenizer has no {token!r} token")
    return found


def _add_eos(folder: Path, token_id: int) -> None:
    path = folder / GENERATION_CONFIG
    config = json.loads(path.read_text()) if path.is_file() else {}
    eos = config.get("eos_token_id")
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if token_id not in ids:
        config["eos_token_id"] = [*ids, token_id]
        path.write_text(json.dumps(config, indent=2) + "\n")
