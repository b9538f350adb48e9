"""The demo report's findings: R1's claims checked on a pipeline's evaluations, and R1-Zero's answers beside the base's.

`FINDINGS` states each claim once: two models (before, after), a metric, the direction the metric must move for the
claim to hold, and the sentence that reports it. `findings` checks those whose two models were evaluated and report the
metric; the others are left out. Only the direction decides (the demo's R1-Zero is short; the sizes of the effects
are studied over seeds by scripts/r1_zero_study.py).
`side_by_side` puts the base's and R1-Zero's first completion of the same prompts in two columns.
"""

import json
import operator
import textwrap
from itertools import zip_longest
from pathlib import Path
from typing import NamedTuple


class Finding(NamedTuple):
    name: str
    before: str      # the model compared against
    after: str
    metric: str      # a key of the evaluations' metrics.json
    direction: str   # a key of DIRECTIONS: how `after` compares with `before` when the finding holds
    sentence: str    # formatted with `numbers(before, after)`


class Checked(NamedTuple):
    name: str
    holds: bool
    text: str


DIRECTIONS = {">": operator.gt, "<": operator.lt, ">=": operator.ge}

FINDINGS = (
    Finding("r1_zero_pass", "pretrain", "r1_zero", "pass@1", ">",
            "R1-Zero's RL raises pass@1 over the base: {before} -> {after} ({points} points)."),
    Finding("r1_zero_length", "pretrain", "r1_zero", "length", ">",
            "R1-Zero thinks longer: mean response length {before} -> {after} tokens ({percent})."),
    Finding("r1_zero_recheck", "pretrain", "r1_zero", "recheck", ">",
            "R1-Zero re-checks its steps more often: re-check share {before} -> {after} ({ratio})."),
    Finding("r1_zero_terse", "pretrain", "r1_zero", "terse", "<",
            "R1-Zero answers less tersely: share with at most one equation {before} -> {after}."),
    Finding("cold_start", "pretrain", "cold_start", "pass@1", ">",
            "Cold start beats the base: pass@1 {before} -> {after} ({points} points)."),
    Finding("language", "cold_start", "reasoning_rl", "lang_mix", "<",
            "Reasoning RL removes language mixing: mixed share {before} after cold start -> {after}."),
    Finding("rejection_sft", "reasoning_rl", "rejection_sft", "pass@1", ">=",
            "Rejection SFT (from the base) matches or beats reasoning RL: pass@1 {after} vs {before} "
            "({points} points)."),
    Finding("helpfulness", "rejection_sft", "all_scenarios_rl", "helpfulness", ">",
            "All-scenario RL raises helpfulness over rejection SFT: {before} -> {after}."),
    Finding("harmlessness", "rejection_sft", "all_scenarios_rl", "unsafe", "<",
            "All-scenario RL lowers the unsafe rate of rejection SFT: {before} -> {after}."),
    Finding("distill", "student_rl", "distill", "pass@1", ">",
            "The distilled student beats the student trained by RL: pass@1 {after} vs {before} ({points} points)."),
)
NONE = "(none: the models the findings compare were not evaluated)"


def numbers(before: float, after: float) -> dict[str, str]:
    """A sentence's fields: both values, the change in points (x100), in percent, and the ratio.

    >>> numbers(0.2, 0.5)
    {'before': '0.200', 'after': '0.500', 'points': '+30.0', 'percent': '+150.0%', 'ratio': 'x2.5'}
    >>> numbers(0.0, 0.1)["ratio"]
    'from zero'
    """
    change = after - before
    return {"before": f"{before:.3f}", "after": f"{after:.3f}", "points": f"{100 * change:+.1f}",
            "percent": f"{100 * change / before:+.1f}%" if before else "from zero",
            "ratio": f"x{after / before:.1f}" if before else "from zero"}


def findings(evals: dict[str, dict], table: tuple[Finding, ...] = FINDINGS) -> list[Checked]:
    """Each finding whose two models are in `evals` (model -> metrics) with its metric, checked; others left out.

    >>> [c.holds for c in findings({"pretrain": {"pass@1": 0.3}, "cold_start": {"pass@1": 0.5}})]
    [True]
    """
    checked = []
    for f in table:
        values = [evals.get(model, {}).get(f.metric) for model in (f.before, f.after)]
        if all(isinstance(v, int | float) for v in values):
            checked.append(Checked(f.name, DIRECTIONS[f.direction](values[1], values[0]),
                                   f.sentence.format(**numbers(*values))))
    return checked


def finding_lines(checked: list[Checked]) -> list[str]:
    """A markdown list, each sentence marked as holding or not.

    >>> finding_lines([Checked("a", True, "A rose."), Checked("b", False, "B fell.")])
    ['- holds: A rose.', '- does not hold: B fell.']
    """
    return [f"- {'holds' if c.holds else 'does not hold'}: {c.text}" for c in checked] or [NONE]


BASE_VS_RL = ("pretrain", "r1_zero")


def first_completions(samples: Path) -> dict[str, dict]:
    """The first sample of each checked prompt of an evaluation's samples.jsonl, by id (judged rows left out)."""
    first: dict[str, dict] = {}
    for row in (json.loads(line) for line in samples.read_text().splitlines() if line.strip()):
        if "kind" not in row:
            first.setdefault(str(row["id"]), row)
    return first


def trim(text: str, chars: int) -> str:
    """At most `chars` characters of `text`, whitespace collapsed, with ' ...' where it was cut.

    >>> trim("a  b\\nc", 9), trim("abcdef", 3)
    ('a b c', 'abc ...')
    """
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars].rstrip() + " ..."


def two_columns(left: str, right: str, width: int) -> list[str]:
    """Two texts wrapped to `width` characters, side by side.

    >>> two_columns("a b c", "d", 3)
    ['a b | d', 'c   |']
    """
    pairs = zip_longest(textwrap.wrap(left, width), textwrap.wrap(right, width), fillvalue="")
    return [f"{x:<{width}} | {y}".rstrip() for x, y in pairs]


def side_by_side(samples: dict[str, Path], n: int = 3, chars: int = 360, width: int = 56) -> list[str]:
    """Markdown: the first `n` prompts both models answered (ids in the first one's order), each in a fenced block
    with the prompt's last two lines and the two first completions in columns; [] without both samples files."""
    if len(samples) != 2 or not all(p.is_file() for p in samples.values()):
        return []
    (left, a), (right, b) = ((name, first_completions(path)) for name, path in samples.items())
    lines = []
    for key in [k for k in a if k in b][:n]:
        prompt = a[key]["prompt"].strip().splitlines()[-2:]
        lines += [f"`{key}`, answer {a[key]['answer']}:", "", "```text", *prompt, "",
                  *two_columns(left, right, width), f"{'-' * width}-+-{'-' * width}",
                  *two_columns(trim(a[key]["completion"], chars), trim(b[key]["completion"], chars), width),
                  "```", ""]
    return lines
