"""Rejection-sampling filters of R1's stage 3 (sec. 2.3.3), and the policies that keep up to m samples per prompt.

A filter is a plain function `filter(text, row=..., kept=...) -> bool`, True meaning "reject": `text` is one sampled
response, `row` its prompt row (answer, task, numbers), `kept` the responses of the same prompt accepted so far (the
duplicate filters compare against them). Settings are bound with `functools.partial` (Hydra `_partial_: true`, see
configs/sample.yaml, whose `filters` order is the order they run in). `screen` counts each rejected sample under the
first filter that rejects it, so the counts add up. Run the doctests: `pytest --doctest-modules src/r1lab/maths/filters.py`.
Simplified: paragraphs are blocks between blank lines; near-duplicates are word-trigram Jaccard neighbours
(lower-cased words), not embeddings or MinHash; languages are told apart by script only (r1lab.maths.rewards).
"""

import random
import re
from collections import Counter
from collections.abc import Callable
from functools import partial

from r1lab.maths.formats import is_cold_start_format, reasoning_of
from r1lab.maths.rewards import accuracy_reward, extract_answer, language_consistency

Filter = Callable[..., bool]  # filter(text, row=dict, kept=list[str]) -> True to reject
SUMMARY_ANSWER = partial(extract_answer, source="summary")  # a chat model's answer: the \boxed{} in <summary>


def broken_format(text: str, **_) -> bool:
    """Not exactly `<reasoning_process>X</reasoning_process><summary>Y</summary>` (the layout SFT rows must have).

    >>> broken_format("<reasoning_process>2+3=5.</reasoning_process><summary>\\\\boxed{5}</summary>")
    False
    >>> broken_format("<reasoning_process>2+3=5.<summary>\\\\boxed{5}</summary>")
    True
    """
    return not is_cold_start_format(text)


def wrong_answer(text: str, row: dict, extract: Callable[[str], str | None] = SUMMARY_ANSWER, **_) -> bool:
    """The answer `extract` reads (the template's; by default the summary's \\boxed{}) is not the row's gold answer.

    >>> row = {"answer": "5", "task": "arithmetic", "numbers": []}
    >>> wrong_answer("<reasoning_process>.</reasoning_process><summary>\\\\boxed{5}</summary>", row=row)
    False
    >>> wrong_answer("<reasoning_process>.</reasoning_process><summary>\\\\boxed{6}</summary>", row=row)
    True
    """
    return accuracy_reward([text], answer=[str(row["answer"])], task=[row.get("task")],
                           numbers=[row.get("numbers")], extract=extract)[0] != 1.0  # None: gold unjudgeable


def mixed_language(text: str, language: str = "en", min_consistency: float = 1.0, **_) -> bool:
    """The CoT's share of words in `language`'s script is below `min_consistency` (1.0: any foreign word rejects).

    >>> mixed_language("<reasoning_process>2 加 3 is 5.</reasoning_process><summary>5</summary>")
    True
    >>> mixed_language("<reasoning_process>2 加 3 is five.</reasoning_process>", min_consistency=0.5)
    False
    >>> mixed_language("<reasoning_process>2 + 3 = 5.</reasoning_process><summary>5</summary>")
    False
    """
    consistency = language_consistency(reasoning_of(text), language)
    return consistency is not None and consistency < min_consistency


def long_paragraph(text: str, max_chars: int = 1000, **_) -> bool:
    """Some paragraph (a block between blank lines) is longer than `max_chars` characters.

    >>> long_paragraph("short\\n\\n" + "x" * 2000), long_paragraph("a\\n\\nb", max_chars=1)
    (True, False)
    """
    return any(len(p.strip()) > max_chars for p in re.split(r"\n\s*\n", text))


def code_block(text: str, **_) -> bool:
    """The CoT holds a fenced code block (```).

    >>> code_block("<reasoning_process>```python\\nprint(5)\\n```</reasoning_process><summary>5</summary>")
    True
    >>> code_block("<reasoning_process>5</reasoning_process><summary>```5```</summary>")
    False
    """
    return "```" in reasoning_of(text)


def duplicate(text: str, kept: list[str], **_) -> bool:
    """Exactly equal to a response already accepted for this prompt.

    >>> duplicate("a b", kept=["a b"]), duplicate("a  b", kept=["a b"])
    (True, False)
    """
    return text in kept


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The set of word n-grams of a lower-cased text (the whole word tuple when shorter than n).

    >>> sorted(shingles("Two plus  two, is FOUR"))
    [('plus', 'two', 'is'), ('two', 'is', 'four'), ('two', 'plus', 'two')]
    """
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; 1.0 for two empty sets.

    >>> jaccard({1, 2, 3}, {2, 3, 4}), jaccard(set(), set())
    (0.5, 1.0)
    """
    return len(a & b) / len(a | b) if a | b else 1.0


def near_duplicate(text: str, kept: list[str], threshold: float = 0.9, **_) -> bool:
    """Word-trigram Jaccard similarity >= `threshold` with a response already accepted for this prompt.

    >>> a = "<reasoning_process>3 * 4 = 12. 13 + 1 = 14. So 2.</reasoning_process><summary>2</summary>"
    >>> near_duplicate(a.replace(" = ", "  =  ").upper(), kept=[a]), near_duplicate("So it is 2.", kept=[a])
    (True, False)
    """
    grams = shingles(text)
    return any(jaccard(grams, shingles(other)) >= threshold for other in kept)


def screen(texts: list[str], row: dict, filters: dict[str, Filter]) -> tuple[list[int], Counter]:
    """Run `filters` in order over one prompt's samples: (indices of the accepted ones, rejections by first reason).

    >>> fs = {"code_block": code_block, "duplicate": duplicate}
    >>> screen(["a", "```x```", "a", "b"], {}, fs)
    ([0, 3], Counter({'code_block': 1, 'duplicate': 1}))
    """
    accepted, rejected = [], Counter()
    for i, text in enumerate(texts):
        kept = [texts[j] for j in accepted]
        reason = next((name for name, check in filters.items() if check(text, row=row, kept=kept)), None)
        if reason is None:
            accepted.append(i)
        else:
            rejected[reason] += 1
    return accepted, rejected


def keep_first(texts: list[str], m: int, rng: random.Random) -> list[int]:
    """The first m.

    >>> keep_first(["ccc", "a", "bb"], 2, random.Random(0))
    [0, 1]
    """
    return list(range(min(m, len(texts))))


def keep_shortest(texts: list[str], m: int, rng: random.Random) -> list[int]:
    """The m shortest (by characters; ties by position), in sampled order.

    >>> keep_shortest(["ccc", "a", "bb", "d"], 2, random.Random(0))
    [1, 3]
    """
    return sorted(sorted(range(len(texts)), key=lambda i: len(texts[i]))[:m])


def keep_random(texts: list[str], m: int, rng: random.Random) -> list[int]:
    """m drawn without replacement by `rng`, in sampled order.

    >>> picked = keep_random(["a", "b", "c", "d"], 2, random.Random(0))
    >>> len(picked), picked == sorted(set(picked)), keep_random(["a"], 3, random.Random(0))
    (2, True, [0])
    """
    return sorted(rng.sample(range(len(texts)), min(m, len(texts))))


KEEP = {"first": keep_first, "shortest": keep_shortest, "random": keep_random}
