"""A multiple-choice cloze set built offline from the held-out documents of a corpus.

Each question is a line of held-out text (a KJV verse of Ruth, Proverbs, Daniel, Mark or
Romans; a line of Hamlet, The Tempest or Twelfth Night) with its last word removed, after the
line before it as context. The choices are the true word and `choices - 1` distractors: last
words of other held-out lines, distinct from it (case-insensitively), with its capitalisation.
A model answers by log-probability; chance is 1/choices. The set is a pure function of
(corpus, questions, choices, seed), so scores are comparable across runs and releases.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from caramba.data.corpora import load_corpus

WORD = re.compile(r"^[A-Za-z]{4,}$")
TRAILING = ".,;:!?'\"-)"
MIN_WORDS = 8


@dataclass(frozen=True)
class ClozeQuestion:
    id: str
    context: str
    answer: str
    choices: tuple[str, ...]


def _candidates(text: str) -> list[tuple[str, str, str]]:
    """(context, answer, document line) for every usable line: previous line + this line's
    words but the last."""
    lines = [line.strip() for line in text.splitlines()]
    out = []
    for prev, line in zip([""] + lines, lines, strict=False):
        words = line.split()
        if len(words) < MIN_WORDS:
            continue
        answer = words[-1].rstrip(TRAILING)
        if not WORD.match(answer):
            continue
        context = (prev + "\n" if prev else "") + " ".join(words[:-1])
        out.append((context, answer, line))
    return out


def _styled(word: str, like: str) -> str:
    return word.capitalize() if like[0].isupper() else word.lower()


def cloze_questions(corpus: str = "english", questions: int = 64, choices: int = 4,
                    seed: int = 0) -> list[ClozeQuestion]:
    docs = load_corpus(corpus).val
    pool = [(doc.name, *c) for doc in docs for c in _candidates(doc.text)]
    rng = random.Random(f"cloze:{corpus}:{seed}")
    picked = rng.sample(range(len(pool)), min(questions, len(pool)))
    answers = sorted({answer.lower() for _, _, answer, _ in pool})
    out = []
    for number, index in enumerate(picked):
        doc, context, answer, _ = pool[index]
        wrong: list[str] = []
        while len(wrong) < choices - 1:
            word = rng.choice(answers)
            if word != answer.lower() and word not in (w.lower() for w in wrong):
                wrong.append(_styled(word, answer))
        options = [answer, *wrong]
        rng.shuffle(options)
        out.append(ClozeQuestion(f"{doc}#{number}", context, answer, tuple(options)))
    return out
