"""`llmos eval`'s inputs and scoring: reading the files (a bad line names its file and line),
cutting text into windows, SQuAD's normalisation and the two QA metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.eval_data import (QAItem, ToolPrompt, contains_answer, exact_match, normalize, read_jsonl, read_qa,
                             read_tool_prompts, read_windows, share, text_windows)
from llmos.kernel.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"


def jsonl(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_qa_rows_keep_their_line_numbers_and_alternatives(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", {"question": "Capital of France?", "answer": "Paris"}, "",
                 {"question": "2 + 2?", "answers": ["4", "four"], "id": 7})
    items = read_qa(path)
    assert [(i.line, i.answers) for i in items] == [(1, ("Paris",)), (3, ("4", "four"))]
    assert read_qa(path, limit=1) == items[:1]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"question": "Q?"}', "answers: Field required"),
    ('{"question": "", "answer": "x"}', "question: String should have at least 1 character"),
    ('{"question": "Q?", "answer": "The."}', "answers: Value error, the answer 'The.' is empty"),
    ('{"question": "Q?", "answer": "a", "answers": ["b"]}', "Value error, give 'answer' or 'answers'"),
])
def test_a_bad_line_is_a_config_error_naming_file_and_line(tmp_path, line, message):
    path = jsonl(tmp_path / "qa.jsonl", {"question": "Q?", "answer": "Yes"}, "", line)
    with pytest.raises(ConfigError) as caught:
        read_qa(path)
    assert str(caught.value).startswith(f"{path}:3: {message}")


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ConfigError, match="empty.jsonl: no items"):
        read_qa(tmp_path / "empty.jsonl")
    with pytest.raises(ConfigError, match="missing.jsonl: no such file"):
        read_jsonl(tmp_path / "missing.jsonl", QAItem)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_windows(tmp_path / "latin1.txt")
    (tmp_path / "one-word.txt").write_text("  hello\n")
    with pytest.raises(ConfigError, match="no text to score"):
        read_windows(tmp_path / "one-word.txt")


def test_tool_prompts_name_a_known_tool_or_none(tmp_path):
    path = jsonl(tmp_path / "tools.jsonl", {"prompt": "2+2?", "tool": "calculator"}, {"prompt": "Hi", "tool": "none"})
    assert [i.tool for i in read_tool_prompts(path, ["calculator"])] == ["calculator", "none"]
    jsonl(path, {"prompt": "2+2?", "tool": "calculator"}, {"prompt": "Hi", "tool": "abacus"})
    with pytest.raises(ConfigError, match=r"tools.jsonl:2: tool 'abacus' is not one of calculator, none"):
        read_tool_prompts(path, ["calculator"])


def test_the_example_files_read():
    assert len(read_qa(EXAMPLES / "qa.jsonl")) == 10
    tools = read_tool_prompts(EXAMPLES / "tools.jsonl", ["calculator", "current_time", "list_files", "read_file",
                                                          "run_python", "write_file"])
    assert {t.tool for t in tools} == {"calculator", "current_time", "list_files", "read_file", "run_python",
                                       "write_file", "none"}
    assert read_windows(EXAMPLES / "text.txt")
    assert isinstance(tools[0], ToolPrompt)


def test_windows_cut_between_words_and_cover_the_text():
    text = "  " + " ".join(f"word{i}" for i in range(200)) + "\n"
    windows = text_windows(text, size=100)
    assert all(len(w.context) + len(w.continuation) <= 100 for w in windows)
    assert "".join(w.context + w.continuation for w in windows) == text.lstrip()
    assert windows[0].context == "word0" and windows[0].continuation.startswith(" word1 ")
    assert text_windows("single") == [] and text_windows("") == []


def test_squad_normalisation_and_the_metrics():
    assert normalize("The  Eiffel Tower, in Paris!") == "eiffel tower in paris"
    assert exact_match("Paris.", ["paris"]) and not exact_match("It is Paris.", ["Paris"])
    assert contains_answer("The capital of France is Paris.", ["Paris"])
    assert contains_answer("It is William Shakespeare.", ["Shakespeare", "William Shakespeare"])
    assert not contains_answer("There are 14 of them.", ["4"])  # whole words only
    assert not contains_answer("Parisian food", ["Paris"])
    assert share([True, False, True, True]) == 0.75 and share([]) is None
