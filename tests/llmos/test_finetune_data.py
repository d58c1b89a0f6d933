"""What `llmos finetune` trains on (llmos.finetune_data), with SmolLM2's real tokenizer: every
bad line reported with its number, chats labelled on their assistant turns only (checked token
by token), plain text on every token, the seeded validation split."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llmos import finetune, library
from llmos.finetune_data import (IGNORE, ChatExample, Encoded, FinetuneDataError, encode_chat, encode_text,
                                 load_examples, parse_line, split)
from llmos.kernel.errors import ConfigError

CHAT = [{"role": "user", "content": "What is the capital of Veltria?"},
        {"role": "assistant", "content": "The capital of Veltria is Corvane."},
        {"role": "user", "content": "And its river?"},
        {"role": "assistant", "content": "The Sarne runs through it."}]


@pytest.fixture(scope="module")
def tokenizer(session_llmos_home: Path):  # noqa: ANN201
    return finetune.load_tokenizer(library.local_folder("smollm2", home=session_llmos_home))


def jsonl(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_chats_and_texts_are_read_and_blank_lines_skipped(tmp_path, tokenizer):
    path = jsonl(tmp_path / "data.jsonl", {"messages": CHAT}, "", "  ", {"text": "Veltria is an island."})
    examples = load_examples(path, tokenizer, max_length=512)
    assert [example.line for example in examples] == [1, 4]


def test_every_bad_line_is_reported_at_once_with_its_number(tmp_path, tokenizer):
    path = jsonl(tmp_path / "data.jsonl",
                 {"messages": CHAT},                                            # 1: good
                 "{not json",                                                   # 2
                 '["a list"]',                                                  # 3
                 {"prompt": "a question"},                                      # 4: neither shape
                 {"messages": [{"role": "user", "content": "Anyone?"}]},        # 5: no assistant turn
                 {"messages": [{"role": "robot", "content": "beep"}]},          # 6
                 {"messages": [{"role": "user", "content": ""}, CHAT[1]]},      # 7: empty content
                 {"text": "Veltria. " * 200},                                   # 8: too long
                 {"text": "fine", "source": "extra key"},                       # 9
                 {"messages": []})                                              # 10
    with pytest.raises(FinetuneDataError) as caught:
        load_examples(path, tokenizer, max_length=100)
    problems = dict(caught.value.problems)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert problems[2].startswith("not JSON")
    assert problems[3].startswith("expected {\"messages\"") and problems[4] == problems[3]
    assert "no assistant turn" in problems[5]
    assert problems[6].startswith("messages.0.role: Input should be 'system', 'user' or 'assistant'")
    assert problems[7].startswith("messages.0.content: String should have at least 1 character")
    assert problems[8].endswith("tokens, more than --max-length 100")
    assert problems[9].startswith("source: Extra inputs are not permitted")
    assert problems[10].startswith("messages: Tuple should have at least 1 item")
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and message.startswith(f"{path}: 9 bad lines")
    assert f"{path}:2: not JSON" in message and f"{path}:10: messages" in message


def test_a_long_list_of_problems_is_cut_in_the_message_not_in_the_error(tmp_path, tokenizer):
    path = jsonl(tmp_path / "data.jsonl", *["{not json"] * 30)
    with pytest.raises(FinetuneDataError) as caught:
        load_examples(path, tokenizer, max_length=64)
    assert len(caught.value.problems) == 30 and str(caught.value).endswith("... and 10 more")


def test_an_empty_or_missing_file_is_an_error(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="no examples"):
        load_examples(jsonl(tmp_path / "empty.jsonl", ""), tokenizer, max_length=64)
    with pytest.raises(ConfigError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl", tokenizer, max_length=64)


def test_a_chat_is_labelled_on_its_assistant_turns_only_token_by_token(tokenizer):
    encoded = encode_chat(CHAT, tokenizer)
    assert encoded.input_ids == tokenizer(tokenizer.apply_chat_template(CHAT, tokenize=False),
                                          add_special_tokens=False)["input_ids"]
    # Worked out apart from the code: after each "<|im_start|>assistant\n", every token up to
    # and including the turn's "<|im_end|>" and the newline after it counts; nothing else does.
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end, newline = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer("\n")["input_ids"][0]
    ids, expected, i = encoded.input_ids, [], 0
    while i < len(ids):
        if ids[i:i + len(header)] == header:
            expected += [IGNORE] * len(header)
            i += len(header)
            while ids[i] != end:
                expected.append(ids[i])
                i += 1
            expected += [end, newline]
            i += 2
        else:
            expected.append(IGNORE)
            i += 1
    assert encoded.labels == expected
    learned = tokenizer.decode([token for token in encoded.labels if token != IGNORE])
    assert learned == "The capital of Veltria is Corvane.<|im_end|>\nThe Sarne runs through it.<|im_end|>\n"


def test_a_system_turn_and_the_questions_are_never_learned(tokenizer):
    chat = [{"role": "system", "content": "You are the Veltrian tourist office."}, *CHAT[:2]]
    encoded = encode_chat(chat, tokenizer)
    learned = tokenizer.decode([token for token in encoded.labels if token != IGNORE])
    assert learned == "The capital of Veltria is Corvane.<|im_end|>\n"


def test_plain_text_is_learned_whole_with_its_end(tokenizer):
    encoded = encode_text("Veltria is an island.", tokenizer, line=3)
    assert encoded.line == 3 and encoded.labels == encoded.input_ids
    assert encoded.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.input_ids[:-1]) == "Veltria is an island."


def test_a_template_that_does_not_render_incrementally_is_refused_per_line(tmp_path, tokenizer):
    last_only = copy.deepcopy(tokenizer)
    last_only.chat_template = "{{ messages[-1]['content'] }}"  # each prefix renders as something else
    path = jsonl(tmp_path / "data.jsonl", {"text": "fine"}, {"messages": CHAT})
    with pytest.raises(FinetuneDataError) as caught:
        load_examples(path, last_only, max_length=512)
    [(line, problem)] = caught.value.problems
    assert line == 2 and "renders this conversation differently as it grows" in problem


def test_parse_line_takes_the_shape_its_keys_name():
    assert isinstance(parse_line(json.dumps({"messages": CHAT})), ChatExample)
    with pytest.raises(ValueError, match="text: String should have at least 1 character"):
        parse_line('{"text": ""}')


def examples(count: int) -> list[Encoded]:
    return [Encoded(line, [line], [line]) for line in range(1, count + 1)]


@pytest.mark.parametrize(("count", "fraction", "held"), [(1, 0.1, 0), (2, 0.1, 1), (10, 0.1, 1), (64, 0.1, 6),
                                                          (10, 0.0, 0), (3, 0.9, 2)])
def test_the_split_holds_out_a_seeded_fraction_at_least_one_never_all(count, fraction, held):
    train, validation = split(examples(count), fraction, seed=0)
    assert len(validation) == held and len(train) == count - held
    assert sorted(e.line for e in train + validation) == list(range(1, count + 1))
    assert split(examples(count), fraction, seed=0) == (train, validation)


def test_another_seed_holds_out_other_examples():
    assert split(examples(64), 0.1, seed=0)[1] != split(examples(64), 0.1, seed=1)[1]
