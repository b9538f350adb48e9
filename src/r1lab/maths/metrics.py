"""Evaluation metrics of R1 (sec. 3): pass@1 and cons@k over k samples per prompt, plus format, language mixing, length,
and how the chain of thought reasons: the share that re-checks a step (R1-Zero's "aha moment") and the share that is terse.

pass@1 = mean correctness of the k samples, averaged over prompts; cons@k = is the majority-voted answer correct.
`score_group` turns one prompt's k completions into numbers; `EvalMetrics` averages them (torchmetrics MeanMetric,
so the means also reduce across processes when torch.distributed is initialised and every rank saw the same tasks).
Simplified: votes are cast on whitespace-normalised answer strings, not on mathematically equivalent classes.
"""

import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torchmetrics import MeanMetric

from r1lab.maths.formats import reasoning_of
from r1lab.maths.rewards import check_answer, language_consistency


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (whitespace-normalised); None entries are ignored; ties go to the first seen.

    >>> majority_vote(["5", None, "7", " 7", "5"]), majority_vote(["3", "4"]), majority_vote([None, None]) is None
    ('5', '3', True)
    """
    keys = [" ".join(a.split()) for a in answers if a is not None]
    if not keys:
        return None
    counts = Counter(keys)
    best = max(counts.values())
    return next(k for k in keys if counts[k] == best)  # Counter keeps first-seen order; take the first at the top count


def is_mixed(consistency: float | None) -> bool:
    """A response mixes languages when part of its CoT is not in the target language; no CoT words = not mixed.

    >>> is_mixed(0.9), is_mixed(1.0), is_mixed(None)
    (True, False, False)
    """
    return consistency is not None and consistency < 1.0


RECHECK = re.compile(r"\b(?:check|checking|wait|verify)\b|验算|等等", re.IGNORECASE)  # words of re-examining a step
EQUATION = re.compile(r"=|等于")


def rechecks(reasoning: str) -> bool:
    """Does a chain of thought go back over a step (check, verify, "wait")?

    >>> rechecks("47 + 8 = 54. Check: 7 + 8 = 15, so 47 + 8 = 55, not 54."), rechecks("47 + 8 = 55.")
    (True, False)
    """
    return RECHECK.search(reasoning) is not None


def is_terse(reasoning: str) -> bool:
    """A chain of thought that shows at most one equation: the answer without its steps.

    >>> is_terse("47 + 8 - 3 = 52."), is_terse("47 + 8 = 55. 55 - 3 = 52."), is_terse("")
    (True, False, True)
    """
    return len(EQUATION.findall(reasoning)) <= 1


def behaviour(texts: Sequence[str], language: str = "en") -> dict[str, float]:
    """Shares of completions whose chain of thought mixes languages (against `language`), re-checks a step, and is
    terse; each chain of thought is read once.

    >>> behaviour([" 4 + 5 = 9. Check: 9 - 5 = 4. </think>", " 4 + 5 = 9. </think>"])
    {'lang_mix': 0.0, 'recheck': 0.5, 'terse': 0.5}
    """
    thoughts = [reasoning_of(t) for t in texts]
    return {"lang_mix": mean([is_mixed(language_consistency(r, language)) for r in thoughts]),
            "recheck": mean([rechecks(r) for r in thoughts]), "terse": mean([is_terse(r) for r in thoughts])}


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; an empty group is a caller's bug.

    >>> mean([1, 0, 1, 0])
    0.5
    """
    if not values:
        raise ValueError("mean of an empty sequence: a prompt needs at least one completion")
    return sum(values) / len(values)


def score_group(texts: Sequence[str], lengths: Sequence[int], finished: Sequence[bool], row: dict,
                extract: Callable[[str], str | None], format_reward: Callable[[list[str]], list[float]],
                language: str = "en") -> dict[str, float]:
    """Scores of one prompt's k completions; `row` has `answer` and optionally `task`, `numbers`.

    >>> from r1lab.maths.rewards import extract_answer, r1_zero_format_reward
    >>> texts = [" so 5 </think> <answer> 5 </answer>", " 是 5 </think> <answer> 6 </answer>", " 5"]
    >>> score_group(texts, [9, 9, 3], [True, True, False], {"answer": "5", "task": "arithmetic"},
    ...             extract_answer, r1_zero_format_reward)["pass@1"]
    0.3333333333333333
    """
    answers = [extract(t) for t in texts]
    task, numbers = row.get("task"), row.get("numbers")
    correct = [check_answer(a, row["answer"], task, numbers) for a in answers]
    seen = behaviour(texts, language)
    return {
        "pass@1": mean(correct),
        "cons@k": float(check_answer(majority_vote(answers), row["answer"], task, numbers)),
        "format": mean(format_reward(list(texts))),
        "lang_mix": seen["lang_mix"],
        "answered": mean([a is not None for a in answers]),
        "truncated": mean([not f for f in finished]),
        "length": mean(lengths),
        "recheck": seen["recheck"],
        "terse": seen["terse"],
    }


class EvalMetrics:
    """Running means of `score_group` results over prompts (all prompts weigh the same), overall and pass@1 per task.

    >>> m = EvalMetrics(k=4)
    >>> m.update({"pass@1": 0.75, "cons@k": 1.0}, task="a"); m.update({"pass@1": 0.25, "cons@k": 0.0}, task="b")
    >>> m.compute()
    {'pass@1': 0.5, 'cons@4': 0.5, 'pass@1/a': 0.75, 'pass@1/b': 0.25}
    """

    def __init__(self, k: int):
        self.k = k
        self.means: dict[str, MeanMetric] = {}

    def _metric(self, name: str) -> MeanMetric:
        if name not in self.means:
            self.means[name] = MeanMetric().set_dtype(torch.float64)  # float32 would print 0.949999988
        return self.means[name]

    def update(self, scores: dict[str, float], task: str | None = None) -> None:
        for name, value in scores.items():
            self._metric(name.replace("@k", f"@{self.k}")).update(float(value))
        if task is not None:
            self._metric(f"pass@1/{task}").update(float(scores["pass@1"]))

    def compute(self) -> dict[str, float]:
        """Overall means first, then the per-task breakdown; empty before any update."""
        overall = {n: float(m.compute()) for n, m in self.means.items() if "/" not in n}
        per_task = {n: float(m.compute()) for n, m in sorted(self.means.items()) if "/" in n}
        return overall | per_task

    def reset(self) -> None:
        self.means.clear()


