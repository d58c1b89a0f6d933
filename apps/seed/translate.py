"""translate: text into another language, line by line, with a few-shot completion prompt.

A small model (SmolLM2-135M) follows examples far better than instructions, so the prompt
is a short list of "Text: ... / Language: ..." pairs ending where the translation goes, and
generation stops at the end of that line.
"""

from __future__ import annotations

from llmos.syscalls import InvalidRequest, Sys

# Target language code -> its name and example pairs (source, translation).
LANGUAGES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "en": ("English", (("谢谢你", "Thank you"), ("早上好", "Good morning"), ("Bonjour", "Hello"))),
    "zh": ("Chinese", (("Thank you", "谢谢你"), ("Good morning", "早上好"), ("Hello", "你好"))),
    "fr": ("French", (("Thank you", "Merci"), ("Good morning", "Bonjour"),
                      ("The world is big.", "Le monde est grand."))),
    "es": ("Spanish", (("Thank you", "Gracias"), ("Good morning", "Buenos días"), ("Hello", "Hola"))),
    "de": ("German", (("Thank you", "Danke"), ("Good morning", "Guten Morgen"), ("Hello", "Hallo"))),
    "ja": ("Japanese", (("Thank you", "ありがとう"), ("Good morning", "おはよう"), ("Hello", "こんにちは"))),
}
ALIASES = {name.lower(): code for code, (name, _) in LANGUAGES.items()}


def language(target_lang: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    code = ALIASES.get(target_lang.lower(), target_lang.lower())
    if code not in LANGUAGES:
        raise InvalidRequest(f"unknown target language {target_lang!r}; known: {', '.join(LANGUAGES)}")
    return LANGUAGES[code]


def prompt(line: str, target_lang: str) -> str:
    name, examples = language(target_lang)
    shots = "".join(f"Text: {source}\n{name}: {target}\n\n" for source, target in examples)
    return f"Translate each text into {name}.\n\n{shots}Text: {line}\n{name}:"


def reply_budget(line: str) -> int:
    """Tokens for one line's translation: generous for its length, bounded."""
    return min(512, 16 + 3 * len(line))


async def main(sys: Sys, text: str, target_lang: str = "en") -> str:
    """Translate `text` into `target_lang`, one line at a time; blank lines are kept."""
    language(target_lang)  # an unknown language fails before any generation
    lines = []
    for line in text.splitlines() or [""]:
        if line.strip():
            reply = await sys.generate(prompt(line.strip(), target_lang), max_tokens=reply_budget(line), stop=("\n",))
            line = reply.text.strip()
            await sys.write(line + "\n")
        lines.append(line)
    return "\n".join(lines)
