"""Rule-based rewards of R1: answer accuracy, strict output format, and language consistency of the chain of thought.

Every reward follows TRL's contract, `reward(completions: list[str], **columns) -> list[float | None]`, where the
columns are dataset columns as lists (answer=[...], task=[...], numbers=[...]); None means "does not apply", or, for a
reward whose spec says `none_is_error` (accuracy: the gold answer cannot be judged), "cannot judge" (see
`weighted_rewards`).
GRPO adds one column to the dataset's: `completion_tokens`, each completion's length in tokens (`overlong_reward`,
DAPO's soft overlong punishment, reads it).
Run the doctests: `pytest --doctest-modules src/r1lab/maths/rewards.py`.
Rewards are combined by `weighted_rewards`, which routes each to the rows of the kinds it applies to (by the `kind`
column) and weights it by a schedule over training steps; r1lab.stages.reward_model scores with a trained reward model.
Simplified: no neural reward model for reasoning (R1 avoided them there); math answers go through math-verify, whose
time limit (signal.alarm) works only in the main thread: elsewhere it runs without one, guarded by size caps only.
"""

import ast
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from r1lab.maths.formats import (
    ANSWER,
    NO_TAG,
    SUMMARY,
    THINK,
    answer_key,
    extract_boxed,
    extract_tag,
    is_cold_start_format,
    layout_ok,
    reasoning_of,
)

CHECK_FAILURES: Counter = Counter()  # checker errors and timeouts by "task:reason"; a metric, never reset here
MAX_EXPR_CHARS = 200                 # countdown expressions longer than this are wrong, not evaluated
MAX_MATH_CHARS = 1000                # longer math answers are refused (counted in CHECK_FAILURES)
MATH_TIMEOUT_S = 2                   # per math-verify parse / compare, main thread only
_POWER_TOWER = re.compile(r"(\^|\*\*)[\s{(]*[\w.]+[\s})]*(\^|\*\*)")  # 10**10**10, 2^{2^{9}}: sympy would hang on them
_UNJUDGED: set = set()               # gold answers already named in the log
log = logging.getLogger(__name__)


def check_failures() -> int:
    """Checker errors, timeouts and gold answers that cannot be judged (one per check) so far, all tasks together;
    GRPO logs the increase over a step as `train/reward_errors` (a wrong or unparseable *prediction* is no error: it
    scores 0 and is not counted)."""
    return sum(CHECK_FAILURES.values())


def _unjudged(gold, task: str | None, reason: str) -> None:
    """The verdict on a gold answer that cannot be judged: None, counted in CHECK_FAILURES and named in the log the
    first time it is seen (not once per completion)."""
    CHECK_FAILURES[f"{task or 'math'}:unjudged_gold"] += 1
    if gold not in _UNJUDGED:
        _UNJUDGED.add(gold)
        log.warning("gold answer %r cannot be judged (%s): its completions score None, their groups are left out of "
                    "the advantages and counted in train/reward_errors", gold, reason)
    return None


def _normalise(text: str, case_sensitive: bool) -> str:
    """Whitespace collapsed, ', ' list separators, one trailing period dropped, optionally case-folded.

    >>> _normalise("  3 ,15,   42. ", True), _normalise("Paris", False)
    ('3, 15, 42', 'paris')
    """
    text = re.sub(r"\s*,\s*", ", ", " ".join(text.split())).removesuffix(".").strip()
    return text if case_sensitive else text.casefold()


def _check_integer(pred: str, gold: str, numbers: list[int] | None) -> bool:
    """Integer equality; the prediction must be a plain integer.

    >>> _check_integer(" 42 ", "42", None), _check_integer("42.0", "42", None)
    (True, False)
    """
    return re.fullmatch(r"[+-]?\d{1,50}", pred.strip()) is not None and int(pred) == int(gold)


def _eval_countdown(node: ast.AST, used: list[int]) -> int:
    """Value of an expression tree of int literals and + - *; literals are appended to `used`; ValueError otherwise."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        left, right = _eval_countdown(node.left, used), _eval_countdown(node.right, used)
        if isinstance(node.op, ast.Mult):
            return left * right
        return left + right if isinstance(node.op, ast.Add) else left - right
    raise ValueError(f"not allowed in a countdown expression: {ast.dump(node)[:40]}")


def _check_countdown(pred: str, gold: str, numbers: list[int] | None) -> bool:
    """The expression uses exactly the multiset `numbers`, only + - * and parentheses, and equals int(gold).

    >>> _check_countdown("(25 - 5) * 3", "60", [3, 5, 25]), _check_countdown("25 * 3 - 5 * 3", "60", [3, 5, 25])
    (True, False)
    >>> _check_countdown("5 ** 3", "125", [5, 3]), _check_countdown("-3 + 5", "2", [3, 5])
    (False, False)
    """
    if numbers is None or len(pred) > MAX_EXPR_CHARS or not re.fullmatch(r"[\d\s()+\-*]+", pred):
        return False
    try:
        tree = ast.parse(pred.strip(), mode="eval")
        used: list[int] = []
        value = _eval_countdown(tree.body, used)
    except (SyntaxError, ValueError, RecursionError):  # malformed expressions are wrong answers, not checker failures
        return False
    return sorted(used) == sorted(numbers) and value == int(gold)


def _check_text(case_sensitive: bool) -> Callable[[str, str, list[int] | None], bool]:
    return lambda pred, gold, numbers: _normalise(pred, case_sensitive) == _normalise(gold, case_sensitive)


_PLAIN_TEXT = re.compile(r"[^\W\d_]+(?:[\s'’.,&-]+[^\W\d_]+)*\.?")  # words only: no digit, LaTeX or operator
_TEXT_MACRO = re.compile(r"\$?\\text(?:bf)?\{(.*)\}\$?", re.DOTALL)   # MATH writes word answers as \text{Monday}


def _unwrapped(text: str) -> str:
    match = _TEXT_MACRO.fullmatch(text.strip())
    return text if match is None else match[1]


def is_plain_text(gold: str) -> bool:
    """Is this answer words rather than maths? Such gold answers are compared as normalised text, not by math-verify.

    >>> is_plain_text("Paris"), is_plain_text("New York"), is_plain_text("\\\\text{Monday}"), is_plain_text("Zürich")
    (True, True, True, True)
    >>> is_plain_text("x^2 + 1"), is_plain_text("12 apples"), is_plain_text("\\\\frac{1}{2}"), is_plain_text("")
    (False, False, False, False)
    """
    return _PLAIN_TEXT.fullmatch(_unwrapped(gold).strip()) is not None


def _check_plain(pred: str, gold: str, numbers: list[int] | None) -> bool:
    """Normalised, case-insensitive text equality, an enclosing \\text{} ignored.

    >>> _check_plain(" paris. ", "Paris", None), _check_plain("\\\\text{Paris}", "Paris", None)
    (True, True)
    >>> _check_plain("Lyon", "Paris", None)
    False
    """
    return _normalise(_unwrapped(pred), False) == _normalise(_unwrapped(gold), False)


def _too_big(text: str) -> bool:
    return len(text) > MAX_MATH_CHARS or _POWER_TOWER.search(text) is not None


def _parse_math(text: str, limit: int | None, inline: bool = True) -> list:
    """math-verify's reading of `text`, by default as inline LaTeX: bare `x^2+1` or `3, 15` is otherwise misread."""
    return parse(f"${text}$" if inline else text, parsing_timeout=limit, raise_on_error=True)


def _check_math(pred: str, gold: str, numbers: list[int] | None) -> bool | None:
    """math-verify equivalence (fractions vs decimals, sets, algebra), with size caps and time limits; None when the
    gold answer itself cannot be read (too long, a parse error or timeout, no expression in it). The gold is read as
    inline LaTeX; the prediction also as free text ("5 dollars" -> 5), and either reading may match.

    >>> _check_math("0.5", "\\\\frac{1}{2}", None), _check_math("x^2", "3", None), _check_math("2x+2", "2(x+1)", None)
    (True, False, True)
    >>> _check_math("5 dollars", "5", None), _check_math("3, 15, 42", "\\\\{3, 15, 42\\\\}", None)
    (True, True)
    >>> _check_math("1", "\\\\frac{", None) is None
    True
    """
    limit = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    if _too_big(gold):
        return _unjudged(gold, "math", "too long, or a power tower")
    try:
        gold_parsed = _parse_math(gold, limit)
    except (Exception, TimeoutException) as e:
        return _unjudged(gold, "math", f"math-verify: {type(e).__name__}")
    if all(isinstance(p, str) for p in gold_parsed):
        return _unjudged(gold, "math", "math-verify reads no expression in it")
    if _too_big(pred):
        CHECK_FAILURES["math:refused"] += 1
        return False
    try:
        readings = _parse_math(pred, limit)[:1] + _parse_math(pred, limit, inline=False)[:1]
        return bool(verify(gold_parsed[:1], readings, timeout_seconds=limit, raise_on_error=True))
    except (Exception, TimeoutException) as e:
        CHECK_FAILURES[f"math:{type(e).__name__}"] += 1
        return False


CHECKERS: dict[str, Callable[[str, str, list[int] | None], bool]] = {
    "arithmetic": _check_integer,
    "count": _check_integer,
    "countdown": _check_countdown,
    "reverse": _check_text(case_sensitive=True),
    "upper": _check_text(case_sensitive=True),
    "sort": _check_text(case_sensitive=False),
    "lookup": _check_text(case_sensitive=False),
}


def judge_answer(pred: str | None, gold, task: str | None = None, numbers: list[int] | None = None) -> bool | None:
    """Is `pred` a correct answer to a problem whose gold field is `gold`? None when the gold cannot be judged (empty,
    or maths that math-verify cannot read): counted in CHECK_FAILURES and named once in the log. Never raises.

    The gold's answer key is compared (GSM8K's `#### 42`, MATH's `\\boxed{}`: see answer_key). Tasks of the demo world
    have exact rules (see CHECKERS); any other gold is plain text (compared normalised) or maths (math-verify).

    >>> judge_answer("42", "Natalia sold 48 / 2 = 24 clips in May.\\n#### 42"), judge_answer("paris", "Paris")
    (True, True)
    >>> judge_answer("\\\\frac{3}{2}", "... so the answer is $\\\\boxed{1.5}$."), judge_answer(None, "Paris")
    (True, False)
    >>> judge_answer("5", "\\\\sqrt{") is None, judge_answer("5", "  ") is None, judge_answer(None, "#### ") is None
    (True, True, True)
    """
    key = "" if gold is None else answer_key(str(gold))
    if not key:
        return _unjudged(gold, task, "no answer in it")
    checker = CHECKERS.get(task) or (_check_plain if is_plain_text(key) else _check_math)
    try:
        return checker("" if pred is None else pred, key, numbers)  # no answer reads as "", wrong for a sound gold
    except Exception as e:  # a checker bug or an unforeseen input must not stop training; it is counted instead
        CHECK_FAILURES[f"{task}:{type(e).__name__}"] += 1
        return False


def check_answer(pred: str | None, gold, task: str | None = None, numbers: list[int] | None = None) -> bool:
    """judge_answer as a yes/no: a gold that cannot be judged counts as not answered correctly. Never raises.

    >>> check_answer("51", "51", "arithmetic"), check_answer("(25 - 5) * 3", "60", "countdown", [25, 5, 3])
    (True, True)
    >>> check_answer("(25 - 5) * 3", "60", "countdown", [25, 5, 3, 3]), check_answer("OLLEH", "olleh", "reverse")
    (False, False)
    >>> check_answer("\\\\frac{1}{2}", "0.5"), check_answer(None, "1"), check_answer("1", "\\\\frac{")
    (True, False, False)
    """
    return judge_answer(pred, gold, task, numbers) is True


def _answer_in(tag: str) -> Callable[[str], str | None]:
    def extract(text: str) -> str | None:
        found = extract_tag(text, tag)
        if found is None:
            return None
        boxed = extract_boxed(found)
        return found if boxed is None else boxed
    return extract


ANSWER_SOURCES: dict[str, Callable[[str], str | None]] = {
    "answer": _answer_in(ANSWER), "summary": _answer_in(SUMMARY), "boxed": extract_boxed,
}


def extract_answer(text: str, source: str = "answer") -> str | None:
    """The final answer: inside <answer> or <summary> (the \\boxed{} within if any), or the last \\boxed{}.

    >>> extract_answer(" 2 + 3 = 5. </think> <answer> 5 </answer>")
    '5'
    >>> extract_answer("<reasoning_process>...</reasoning_process><summary>It is \\\\boxed{5}.</summary>", "summary")
    '5'
    >>> extract_answer("no tags at all", "summary") is None
    True
    """
    if source not in ANSWER_SOURCES:
        raise ValueError(f"extract_answer: source must be one of {sorted(ANSWER_SOURCES)}, got {source!r}")
    return ANSWER_SOURCES[source](text)


def completion_text(completion: str | list[dict]) -> str:
    """A completion as text; TRL's conversational completions are [{"role": "assistant", "content": ...}]."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def accuracy_reward(completions: list, answer: list[str], task: list[str] | None = None,
                    numbers: list[list[int]] | None = None, extract: Callable[[str], str | None] = extract_answer,
                    **_) -> list[float | None]:
    """1.0 for a correct final answer, else 0.0; None where the gold answer cannot be judged (see judge_answer; its
    spec in configs/module/grpo.yaml says `none_is_error`). `extract` reads the answer (the template's).

    >>> accuracy_reward([" 1 + 1 = 2. </think> <answer> 2 </answer>", " </think> <answer> 3 </answer>"],
    ...                 answer=["2", "2"], task=["arithmetic", "arithmetic"])
    [1.0, 0.0]
    >>> accuracy_reward([" a </think> <answer> Paris </answer>", " a </think> <answer> 4 </answer>"],
    ...                 answer=["paris", "\\boxed{}"])
    [1.0, None]
    """
    tasks, nums = task or [None] * len(completions), numbers or [None] * len(completions)
    verdicts = [judge_answer(extract(completion_text(c)), gold, t, n)
                for c, gold, t, n in zip(completions, answer, tasks, nums, strict=True)]
    return [None if v is None else float(v) for v in verdicts]


R1_ZERO_FORMAT = re.compile(
    rf"^(?P<think>{NO_TAG}*)</{THINK}>\s*<{ANSWER}>(?P<answer>{NO_TAG}*)</{ANSWER}>\s*$", re.DOTALL)


def r1_zero_format_reward(completions: list, **_) -> list[float]:
    """1.0 iff the completion (it starts inside the prompt's open <think>) is `reasoning </think> <answer> x </answer>`.

    Regex: ^(no R1 tag)*</think>\\s*<answer>(no R1 tag)*</answer>\\s*$, both parts non-blank; nothing may follow.

    >>> r1_zero_format_reward([" 2 + 3 = 5. </think> <answer> 5 </answer>",
    ...                        "\\n2 + 3 = 5.\\n</think>\\n\\n<answer>\\n5\\n</answer>\\n"])  # newlines are fine
    [1.0, 1.0]
    >>> r1_zero_format_reward(["  </think> <answer> 5 </answer>", " a </think> <answer> </answer>"])
    [0.0, 0.0]
    >>> r1_zero_format_reward([" a <think> b </think> <answer> 5 </answer>", " a </think> <answer> 5 </answer> more"])
    [0.0, 0.0]
    """
    return [float(layout_ok(R1_ZERO_FORMAT, completion_text(c))) for c in completions]


def cold_start_format_reward(completions: list, **_) -> list[float]:
    """1.0 iff the response is `<reasoning_process>X</reasoning_process><summary>Y</summary>` (X, Y non-blank) and
    nothing else but whitespace around the tags.

    >>> cold_start_format_reward(["<reasoning_process>2+3=5.</reasoning_process><summary>\\\\boxed{5}</summary>",
    ...                           " <reasoning_process>a</reasoning_process><summary>b</summary>"])
    [1.0, 1.0]
    >>> cold_start_format_reward(["<reasoning_process>a</reasoning_process><summary>b</summary> c",
    ...                           "<reasoning_process></reasoning_process><summary>b</summary>"])
    [0.0, 0.0]
    """
    return [float(is_cold_start_format(completion_text(c))) for c in completions]


_SCRIPT_CHARS = {  # character ranges of the scripts told apart; CJK characters are one word each
    "cjk": "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff",
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u04ff",
    "greek": "\u0370-\u03ff",
    "arabic": "\u0600-\u06ff",
    "hangul": "\uac00-\ud7af",
}
_WORD = re.compile("|".join(
    [f"(?P<cjk>[{_SCRIPT_CHARS['cjk']}])"]
    + [f"(?P<{name}>[{chars}]+)" for name, chars in _SCRIPT_CHARS.items() if name != "cjk"]
    + [f"(?P<other>[^\\W\\d_{''.join(_SCRIPT_CHARS.values())}]+)"]))  # letters of any other script
LANGUAGE_SCRIPT = {"en": "latin", "fr": "latin", "de": "latin", "es": "latin", "it": "latin", "pt": "latin",
                   "zh": "cjk", "ja": "cjk", "ru": "cyrillic", "uk": "cyrillic", "el": "greek", "ar": "arabic",
                   "ko": "hangul"}
_MARKUP = re.compile(r"</?[a-z_]+>|\\[A-Za-z]+")  # tags and LaTeX commands are not words of any language


def words_by_script(text: str) -> Counter:
    """Number of words per script: latin/cyrillic/... letter runs, and each CJK character; digits and markup ignored.

    >>> dict(words_by_script("23 加 45 等于 68. So \\\\boxed{68}"))
    {'cjk': 3, 'latin': 1}
    """
    return Counter(m.lastgroup for m in _WORD.finditer(_MARKUP.sub(" ", text)))


def language_consistency(text: str, target: str = "en") -> float | None:
    """Fraction of the words of `text` (a chain of thought) written in the `target` language's script; None if no words.

    R1 (sec. 2.3.3): Num(words in target language) / Num(words). Languages are told apart by script only.

    >>> language_consistency("23 + 45 = 68. So the answer is 68.")
    1.0
    >>> language_consistency("2 加 3 等于 5。 So it is 5.")
    0.5
    >>> language_consistency("Это тест"), language_consistency("12 + 3 = 15.") is None
    (0.0, True)
    """
    if target not in LANGUAGE_SCRIPT:
        raise ValueError(f"language_consistency: unknown target language {target!r}; known: {sorted(LANGUAGE_SCRIPT)}")
    counts = words_by_script(text)
    total = sum(counts.values())
    return counts[LANGUAGE_SCRIPT[target]] / total if total else None


def language_consistency_reward(completions: list, target: str = "en", **_) -> list[float | None]:
    """Language consistency of each completion's chain of thought (either output format); None when it has no words.

    >>> language_consistency_reward(["<reasoning_process>2 乘 3 等于 6。</reasoning_process><summary>6</summary>",
    ...                              " 2 * 3 = 6, so 6. </think> <answer> 6 </answer>"])
    [0.0, 1.0]
    """
    return [language_consistency(reasoning_of(completion_text(c)), target) for c in completions]


def overlong_penalty(length: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to max_tokens - buffer tokens, then falling
    linearly to -1 at max_tokens, -1 beyond (DAPO: max_tokens 20480, buffer 4096).

    >>> [overlong_penalty(n, max_tokens=100, buffer=20) for n in (50, 80, 90, 95, 100, 130)]
    [0.0, 0.0, -0.5, -0.75, -1.0, -1.0]
    """
    if not 0 < buffer <= max_tokens:
        raise ValueError(f"overlong_penalty: need 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
    return max(-1.0, min(0.0, (max_tokens - buffer - length) / buffer))


def overlong_reward(completions: list, completion_tokens: list[int] | None = None, max_tokens: int = 20480,
                    buffer: int = 4096, **_) -> list[float]:
    """`overlong_penalty` of each completion's token count, the `completion_tokens` column GRPO adds to the rows.

    >>> overlong_reward(["a", "b", "c"], completion_tokens=[96, 112, 128], max_tokens=128, buffer=32)
    [0.0, -0.5, -1.0]
    """
    if completion_tokens is None:
        raise ValueError("overlong_reward needs the `completion_tokens` column (completion lengths in tokens): GRPO "
                         "passes it; elsewhere add it to the rows")
    return [overlong_penalty(n, max_tokens, buffer) for n in completion_tokens]


def schedule_factor(schedule: Mapping | None, step: int) -> float:
    """The weight factor at training `step` of a piecewise-constant schedule {from step: factor}; 0 before its first
    step, 1 without a schedule. R1 added its preference rewards for the last 400 of 1,700 steps: {1300: 1.0}.

    >>> schedule_factor(None, 5), schedule_factor({1300: 1.0}, 1299), schedule_factor({1300: 1.0}, 1300)
    (1.0, 0.0, 1.0)
    >>> schedule_factor({0: 1.0, "100": 0.5}, 150)
    0.5
    """
    if schedule is None:
        return 1.0
    started = sorted((int(s), float(f)) for s, f in schedule.items() if int(s) <= step)
    return started[-1][1] if started else 0.0


def _rows_of(name: str, kinds, columns: dict[str, list], n: int) -> list[int]:
    """Indices of the rows whose `kind` column is one of `kinds` (all rows when kinds is None)."""
    if kinds is None:
        return list(range(n))
    if "kind" not in columns:
        raise ValueError(f"reward {name!r} applies to kinds {list(kinds)} but the rows have no 'kind' column")
    return [i for i, kind in enumerate(columns["kind"]) if kind in kinds]


def weighted_rewards(rewards: dict, completions: list, columns: dict[str, list],
                     step: int = 0) -> tuple[list[float | None], dict[str, list]]:
    """Score completions with every reward; total = sum of weight x value over the rewards that apply (None skipped).

    rewards: name -> {"fn": reward function, "weight": float (default 1), "kinds": the `kind` column values it
             applies to (default every row), "schedule": {from step: weight factor} (see schedule_factor),
             "none_is_error": a None it returns means "cannot judge" (default false: "does not apply")}
    columns: dataset columns, one value per completion.
    A reward is called on the rows it applies to only, and not at all while its factor is 0; the other rows get None
    (excluded, not 0). Returns (total per completion, name -> raw values). A completion no reward applies to gets 0.0
    (as TRL's nansum); one that a `none_is_error` reward could not judge gets None (GRPO leaves its group out).

    >>> fns = {"acc": {"fn": accuracy_reward}, "lang": {"fn": language_consistency_reward, "weight": 0.5}}
    >>> total, raw = weighted_rewards(fns, [" so 2 + 3 = 5 </think> <answer> 5 </answer>"], {"answer": ["5"]})
    >>> total, raw
    ([1.5], {'acc': [1.0], 'lang': [1.0]})
    >>> fns = {"acc": {"fn": accuracy_reward, "kinds": ["reasoning"]}, "lang": {"fn": language_consistency_reward,
    ...        "kinds": ["general"], "schedule": {10: 1.0}}}
    >>> cols = {"answer": ["5", "ok"], "kind": ["reasoning", "general"]}
    >>> weighted_rewards(fns, [" so 5 </think> <answer> 5 </answer>"] * 2, cols, step=10)
    ([1.0, 1.0], {'acc': [1.0, None], 'lang': [None, 1.0]})
    >>> weighted_rewards(fns, [" so 5 </think> <answer> 5 </answer>"] * 2, cols, step=9)[1]["lang"]
    [None, None]
    >>> fns = {"acc": {"fn": accuracy_reward, "none_is_error": True}, "lang": {"fn": language_consistency_reward}}
    >>> weighted_rewards(fns, [" so 5 </think> <answer> 5 </answer>"] * 2, {"answer": ["5", "#### "]})[0]
    [2.0, None]
    """
    n, raw, factors = len(completions), {}, {}
    unjudged = [False] * n
    for name, spec in rewards.items():
        factors[name] = schedule_factor(spec.get("schedule"), step)
        rows = _rows_of(name, spec.get("kinds"), columns, n) if factors[name] else []
        raw[name] = [None] * n
        if not rows:
            continue
        picked = {k: [v[i] for i in rows] for k, v in columns.items()}
        values = list(spec["fn"]([completions[i] for i in rows], **picked))
        if len(values) != len(rows):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(rows)} completions")
        for i, value in zip(rows, values):
            raw[name][i] = value
            unjudged[i] |= value is None and bool(spec.get("none_is_error", False))
    total = [sum(rewards[name].get("weight", 1.0) * factors[name] * values[i] for name, values in raw.items()
                 if values[i] is not None) for i in range(n)]
    return [None if bad else float(t) for t, bad in zip(total, unjudged)], raw
