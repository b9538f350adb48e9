"""The demo world: synthetic, checkable tasks generated from one seed, written as the jsonl files every stage reads.

Run: `python -m r1lab.build` (writes it, the tokenizer and tiny models), or `write_world("artifacts/world", seed=0)`.
Reasoning tasks are arithmetic chains and Countdown puzzles, solved step by step in English, in Chinese operation words,
or a per-step mix of both (as R1-Zero mixed languages); general tasks are trivial string, list and fact look-up queries.
The pretraining text mixes solution styles as web text does (`STYLES`): terse answers, worked steps, and worked steps
that re-check each one, sometimes catching a slip. The short styles are the common ones and the least reliable for a
small model, which must then do a whole step, or the whole sum, in its head; nothing says which style to use.
Simplified: a base model's pretraining corpus is built from the train problems themselves (a quarter in the R1-Zero
layout, some of that sloppy), so a ~4M-parameter model can learn the tasks on a CPU; facts exist only in the
pretraining text.
"""

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from r1lab.maths import formats


class Step(NamedTuple):
    """One sentence of a solution: `left op right = result`."""

    left: int
    op: str
    right: int
    result: int


OPS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
ZH_OPS = {"+": "加", "-": "减", "*": "乘"}
# Problems are drawn in this cycle: three arithmetic to one Countdown, so pre-training spends most of its steps on the
# digit facts that the RL stages then sharpen.
REASONING_KINDS = (("arithmetic", 1), ("arithmetic", 2), ("arithmetic", 3), ("countdown", 1),
                   ("arithmetic", 1), ("arithmetic", 2), ("arithmetic", 3), ("countdown", 2))
GENERAL_TASKS = ("reverse", "upper", "count", "sort")  # plus "lookup", one row per fact of the split
ARITHMETIC_PROMPTS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "Evaluate {e}.")
FACT_SENTENCES = ("The capital of {c} is {k}.", "{k} is the capital of {c}.", "{c} has its capital in {k}.")
DEFAULT_SIZES = {"n_reasoning_train": 20000, "n_reasoning_val": 200, "n_reasoning_test": 500, "n_general_train": 5000,
                 "n_general_val": 200, "n_general_test": 500, "n_facts": 600, "n_cold_start": 3000,
                 "n_cold_start_val": 100, "n_pretrain_val": 300}
DEFAULT_LANG_MIX = {"en": 0.7, "zh": 0.15, "mixed": 0.15}
DEFAULT_COLD_START_LANG_MIX = {"en": 0.8, "zh": 0.1, "mixed": 0.1}
# How a pretraining document solves its problem: "terse" states the result of the whole expression, "worked" works
# out each step (its units digit first, as the cold-start data does), "recheck" also checks each step by undoing it.
# Slips per +/- step of arithmetic documents, by style: uncaught in terse and worked ones (web text's unreliability),
# caught by the check in re-checked ones.
STYLES = ("terse", "worked", "recheck")
DEFAULT_STYLE_MIX = {"terse": 0.3, "worked": 0.35, "recheck": 0.35}
DEFAULT_SLIP_FRAC = {"terse": 0.15, "worked": 0.15, "recheck": 0.05}


def units_step(step: Step) -> Step | None:
    """The one-digit sum or difference behind a (number) +/- (digit) step, borrowing ten when needed; else None.

    >>> units_step(Step(47, "+", 8, 55)), units_step(Step(43, "-", 8, 35)), units_step(Step(23, "+", 45, 68))
    (Step(left=7, op='+', right=8, result=15), Step(left=13, op='-', right=8, result=5), None)
    """
    if step.op == "*" or step.right > 9 or step.left < 10:
        return None
    units = step.left % 10 + (10 if step.op == "-" and step.left % 10 < step.right else 0)
    return Step(units, step.op, step.right, OPS[step.op](units, step.right))


def say_step(step: Step, lang: str) -> str:
    """`left op right = result` in words of `lang`.

    >>> say_step(Step(47, "+", 8, 55), "en"), say_step(Step(47, "+", 8, 55), "zh")
    ('47 + 8 = 55', '47 加 8 等于 55')
    """
    if lang == "zh":
        return f"{step.left} {ZH_OPS[step.op]} {step.right} 等于 {step.result}"
    return f"{step.left} {step.op} {step.right} = {step.result}"


def slipped(step: Step, rng: random.Random) -> Step:
    """The step with a slip in its result: the carry or borrow forgotten (off by ten), or the units digit off by one.

    >>> slipped(Step(47, "+", 8, 55), random.Random(0)).result in (45, 54, 56, 65)
    True
    """
    delta = rng.choice((-10, 10, -1, 1))
    result = step.result + delta if step.result + delta >= 0 else step.result - delta
    return step._replace(result=result)


def slip_chain(steps: list[Step], rng: random.Random, rate: float) -> list[Step]:
    """An arithmetic chain (each step starts from the last one's result) where each +/- step slips with probability
    `rate` and the steps after it go on from the wrong value, as a careless solution does; nothing goes negative.

    >>> slip_chain([Step(47, "+", 8, 55), Step(55, "-", 3, 52)], random.Random(0), 0.0)
    [Step(left=47, op='+', right=8, result=55), Step(left=55, op='-', right=3, result=52)]
    >>> [s.result for s in slip_chain([Step(47, "+", 8, 55), Step(55, "-", 3, 52)], random.Random(1), 1.0)][-1] != 52
    True
    """
    out: list[Step] = []
    for step in steps:
        left = out[-1].result if out else step.left
        step = Step(left, step.op, step.right, OPS[step.op](left, step.right))
        if step.result < 0:
            return steps   # a slip made a later step negative: keep the solution right
        out.append(slipped(step, rng) if step.op != "*" and rng.random() < rate else step)
    return out


def render_step(step: Step, lang: str, style: str = "worked", slip: Step | None = None) -> str:
    """One step as a sentence. A (number) +/- (digit) step first works out its units digit, as one does by hand;
    "recheck" then checks the step by undoing it. With `slip` (the step with a wrong result), "recheck" states the
    slip, its check fails, and it works the step out again.

    >>> render_step(Step(23, "+", 45, 68), "zh")
    '23 加 45 等于 68。'
    >>> render_step(Step(47, "+", 8, 55), "en")
    '7 + 8 = 15, so 47 + 8 = 55.'
    >>> render_step(Step(47, "+", 8, 55), "en", "recheck")
    '7 + 8 = 15, so 47 + 8 = 55. Check: 55 - 8 = 47.'
    >>> render_step(Step(47, "+", 8, 55), "en", "recheck", slip=Step(47, "+", 8, 45))
    '7 + 8 = 15, so 47 + 8 = 45. Check: 45 - 8 = 37, not 47. Wait, 7 + 8 = 15, so 47 + 8 = 55.'
    >>> render_step(Step(47, "+", 8, 55), "zh", "recheck")
    '7 加 8 等于 15，所以 47 加 8 等于 55。验算：55 减 8 等于 47。'
    """
    zh, hint = lang == "zh", units_step(step)
    if hint is None:
        return say_step(step, lang) + ("。" if zh else ".")

    def careful(s: Step) -> str:
        return f"{say_step(hint, lang)}，所以 {say_step(s, lang)}。" if zh else f"{say_step(hint, lang)}, so {say_step(s, lang)}."

    if style != "recheck":
        return careful(step)
    undo = {"+": "-", "-": "+"}[step.op]
    first = slip or step
    check = say_step(Step(first.result, undo, step.right, OPS[undo](first.result, step.right)), lang)
    if first.result == step.result:
        return f"{careful(step)}验算：{check}。" if zh else f"{careful(step)} Check: {check}."
    if zh:
        return f"{careful(first)}验算：{check}，不是 {step.left}。等等，{careful(step)}"
    return f"{careful(first)} Check: {check}, not {step.left}. Wait, {careful(step)}"


def render_solution(steps: list[Step], lang: str, rng: random.Random, answer: str | None = None,
                    style: str = "worked", expression: str | None = None, caught_frac: float = 0.0) -> str:
    """Steps in `style` (see STYLES), then a conclusion, in `lang` ("en", "zh", or "mixed": a coin flip per sentence).

    `answer` (the conclusion's) defaults to the last step's result. "terse" writes `expression = result` instead of
    the steps; "recheck" slips in a step with probability `caught_frac`, and its check catches the slip.

    >>> render_solution([Step(23, "+", 45, 68), Step(68, "-", 17, 51)], "en", random.Random(0))
    '23 + 45 = 68. 68 - 17 = 51. So the answer is 51.'
    >>> render_solution([Step(2, "*", 3, 6)], "zh", random.Random(0))
    '2 乘 3 等于 6。 所以答案是 6。'
    >>> render_solution([Step(47, "+", 8, 55), Step(55, "-", 3, 52)], "en", random.Random(0), style="terse",
    ...                 expression="47 + 8 - 3")
    '47 + 8 - 3 = 52. So the answer is 52.'
    """
    if lang not in ("en", "zh", "mixed"):
        raise ValueError(f"render_solution: lang must be 'en', 'zh' or 'mixed', got {lang!r}")
    if style not in STYLES:
        raise ValueError(f"render_solution: style must be one of {STYLES}, got {style!r}")
    langs = [rng.choice(("en", "zh")) if lang == "mixed" else lang for _ in range(len(steps) + 1)]
    answer = str(steps[-1].result) if answer is None else answer
    end = f"所以答案是 {answer}。" if langs[-1] == "zh" else f"So the answer is {answer}."
    if style == "terse":
        if expression is None:
            raise ValueError("render_solution: style 'terse' needs the expression")
        if langs[0] == "zh":
            return f"{' '.join(ZH_OPS.get(w, w) for w in expression.split())} 等于 {steps[-1].result}。 {end}"
        return f"{expression} = {steps[-1].result}. {end}"
    sentences = [render_step(s, lg, style, slipped(s, rng) if style == "recheck" and rng.random() < caught_frac
                             else None) for s, lg in zip(steps, langs)]
    return " ".join(sentences + [end])


def arithmetic_steps(operands: list[int], ops: list[str]) -> list[Step]:
    """Steps evaluating `operands` joined by `ops`: products first, then left to right.

    >>> arithmetic_steps([2, 3, 4], ["+", "*"])
    [Step(left=3, op='*', right=4, result=12), Step(left=2, op='+', right=12, result=14)]
    """
    vals, ops, steps = list(operands), list(ops), []
    while "*" in ops:
        i = ops.index("*")
        steps.append(Step(vals[i], "*", vals[i + 1], vals[i] * vals[i + 1]))
        vals[i : i + 2] = [steps[-1].result]
        del ops[i]
    acc = vals[0]
    for op, value in zip(ops, vals[1:]):
        steps.append(Step(acc, op, value, OPS[op](acc, value)))
        acc = steps[-1].result
    return steps


def make_arithmetic(rng: random.Random, level: int) -> tuple[str, list[Step], list[int]]:
    """(expression, steps, []): a two-digit number and one-digit terms added or subtracted (two at level 1, three at
    level 2); level 3 is a product of two digits and then two terms. Every +/- step is (running total) +/- (a digit),
    a fact table a ~4M-parameter model half-learns in a CPU pre-training run; nothing is negative.

    >>> [make_arithmetic(random.Random(1), level)[0] for level in (1, 2, 3)]
    ['42 + 2 + 8', '25 + 8 + 8 - 8', '8 * 8 + 8 - 8']
    """
    while True:
        ops = [rng.choice("+-") for _ in range(min(level, 2) + 1)]
        operands = [rng.randint(10, 99)] + [rng.randint(1, 9) for _ in ops]
        if level >= 3:
            operands[0], ops = rng.randint(2, 9), ["*", *ops[1:]]
        steps = arithmetic_steps(operands, ops)
        if all(s.result >= 0 for s in steps):
            expr = " ".join(f"{o} {v}" for o, v in zip(ops, operands[1:]))
            return f"{operands[0]} {expr}", steps, []


def join_expr(left: tuple[str, str], op: str, right: tuple[str, str]) -> str:
    """Join two (expression, top operator) pairs with `op`, adding only the parentheses precedence needs.

    >>> join_expr(("25 - 5", "-"), "*", ("3", ""))
    '(25 - 5) * 3'
    >>> join_expr(("9", ""), "-", ("2 + 3", "+"))
    '9 - (2 + 3)'
    """
    low = ("+", "-")
    lhs = f"({left[0]})" if op == "*" and left[1] in low else left[0]
    rhs = f"({right[0]})" if op in ("*", "-") and right[1] in low else right[0]
    return f"{lhs} {op} {rhs}"


def make_countdown(rng: random.Random, level: int) -> tuple[str, list[Step], list[int]]:
    """(expression, steps, numbers): level + 2 numbers in 1-25 joined by a random expression worth 1-100."""
    while True:
        numbers = [rng.randint(1, 25) for _ in range(level + 2)]
        pool, steps = [(n, str(n), "") for n in numbers], []
        while len(pool) > 1:
            a, b, op = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool))), rng.choice("+-*")
            if op == "-" and a[0] < b[0]:
                a, b = b, a
            steps.append(Step(a[0], op, b[0], OPS[op](a[0], b[0])))
            pool.append((steps[-1].result, join_expr(a[1:], op, b[1:]), op))
        if all(s.result > 0 for s in steps) and pool[0][0] <= 100:
            return pool[0][1], steps, numbers


def reasoning_problem(rng: random.Random, task: str, level: int) -> tuple[object, dict, list[Step]]:
    """(dedup key, row without id, steps) for one problem; the row's solution is the English one."""
    expr, steps, numbers = (make_arithmetic if task == "arithmetic" else make_countdown)(rng, level)
    target = steps[-1].result
    if task == "arithmetic":
        key, prompt, final = expr, rng.choice(ARITHMETIC_PROMPTS).format(e=expr), str(target)
    else:
        key, final = (tuple(sorted(numbers)), target), expr
        prompt = (f"Using the numbers {', '.join(map(str, numbers))}, make {target}. "
                  "Use each number exactly once, with +, - and *.")
    solution = render_solution(steps, "en", rng, answer=final)
    row = {"kind": "reasoning", "task": task, "level": level, "prompt": prompt, "answer": str(target),
           "solution": solution, "numbers": numbers}
    return key, row, steps


def completion_answer(row: dict) -> str:
    """What a completion should answer: the number for arithmetic and general tasks, the expression for countdown.

    >>> completion_answer({"task": "countdown", "solution": "... So the answer is (25 - 5) * 3.", "answer": "60"})
    '(25 - 5) * 3'
    """
    if row["task"] != "countdown":
        return row["answer"]
    return row["solution"].rsplit("So the answer is ", 1)[1].removesuffix(".")


def unique_split(make: Callable[[random.Random, int], tuple], rng: random.Random, n: int, seen: set, what: str) -> list:
    """n items from `make(rng, i)` whose keys are not in `seen` (updated), so no two splits share a problem."""
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"write_world: cannot find {n} distinct {what} problems; lower the size")
        key, *item = make(rng, len(out))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def make_word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable invented lowercase word.

    >>> make_word(random.Random(1)).isalpha()
    True
    """
    n = rng.randint(*syllables)
    word = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(n))
    return word + (rng.choice("lnrs") if rng.random() < 0.4 else "")


def make_facts(seed: int, n: int) -> list[tuple[str, str]]:
    """n (invented country, invented capital) pairs with distinct countries."""
    rng, facts, countries = random.Random(f"{seed}/facts"), [], set()
    while len(facts) < n:
        country = (make_word(rng, (1, 2)) + rng.choice(("ria", "land", "ora", "avia", "enia", "ovo"))).capitalize()
        if country not in countries:
            countries.add(country)
            facts.append((country, make_word(rng, (1, 2)).capitalize()))
    return facts


def general_problem(rng: random.Random, task: str) -> tuple[str, str]:
    """(prompt, answer) of one non-lookup general task."""
    word = make_word(rng)
    if task == "reverse":
        return f"Reverse the letters of the word '{word}'.", word[::-1]
    if task == "upper":
        return f"Write the word '{word}' in capital letters.", word.upper()
    if task == "count":
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        return f"How many times does the letter '{letter}' appear in '{word}'?", str(word.count(letter))
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    return (f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}.",
            ", ".join(map(str, sorted(numbers))))


def general_split(seed: int, split: str, n: int, facts: list[tuple[str, str]], seen: set) -> list[dict]:
    """n general rows: one look-up per fact of this split, the rest cycling through GENERAL_TASKS, shuffled."""
    if n < len(facts):
        raise ValueError(f"write_world: n_general_{split}={n} is below the {len(facts)} facts it must ask about")
    rng = random.Random(f"{seed}/general/{split}")
    items = [("lookup", f"What is the capital of {c}?", k) for c, k in facts]
    seen.update(prompt for _, prompt, _ in items)

    def make(r: random.Random, i: int) -> tuple:
        task = GENERAL_TASKS[i % len(GENERAL_TASKS)]
        prompt, answer = general_problem(r, task)
        return prompt, task, prompt, answer

    items += unique_split(make, rng, n - len(items), seen, f"general {split}")
    rng.shuffle(items)
    return [{"id": f"{task}-{split}-{i:06d}", "kind": "general", "task": task, "level": 1, "prompt": prompt,
             "answer": answer, "solution": "", "numbers": []} for i, (task, prompt, answer) in enumerate(items)]


def reasoning_split(seed: int, split: str, n: int, seen: set) -> list[tuple[dict, list[Step]]]:
    """n (row, steps) reasoning problems, the kinds of REASONING_KINDS in turn, none whose key is in `seen`."""
    def make(rng: random.Random, i: int) -> tuple:
        task, level = REASONING_KINDS[i % len(REASONING_KINDS)]
        key, row, steps = reasoning_problem(rng, task, level)
        return key, {"id": f"{task}-{split}-{i:06d}", **row}, steps

    return [tuple(item) for item in unique_split(make, random.Random(f"{seed}/reasoning/{split}"), n, seen, split)]


def cold_start_reasoning(row: dict, steps: list[Step], lang: str = "en", rng: random.Random | None = None) -> str:
    """A longer chain of thought: the steps (in `lang`), the conclusion, then a check line in English."""
    body = render_solution(steps, lang, rng or random.Random(0), answer=completion_answer(row))
    if row["task"] == "countdown":
        check = (f"Check: {completion_answer(row)} = {row['answer']}, and it uses "
                 f"{', '.join(map(str, row['numbers']))} each exactly once.")
    else:
        undo = {"+": "-", "-": "+", "*": "/"}
        check = "Check: " + " ".join(f"{s.result} {undo[s.op]} {s.right} = {s.left}." for s in reversed(steps))
    return f"Let me work through this step by step. {body} {check}"


def break_response(response: str, kind: int) -> str:
    """One of three format faults real cold-start data has: a lost closing tag, or the two sections swapped."""
    close_r, open_s = f"</{formats.REASONING}>", f"<{formats.SUMMARY}>"
    if kind == 0:
        return response.replace(f"</{formats.SUMMARY}>", "")
    if kind == 1:
        return response.replace(close_r, "")
    head, tail = response.split(close_r + open_s)
    return f"{open_s}{tail}{head}{close_r}"


def chat_row(row: dict, response: str, prefix: str) -> dict:
    return {"id": f"{prefix}-{row['id']}", "kind": row["kind"], "task": row["task"], "prompt": row["prompt"],
            "response": response, "answer": row["answer"], "numbers": row["numbers"]}


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    """One key of `weights` (a language or a solution style), drawn by its weight."""
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def cold_start_rows(problems: list, rng: random.Random, broken_frac: float, lang_mix: dict[str, float]) -> list[dict]:
    """Chat rows in the cold-start format, each chain of thought in a language drawn from `lang_mix` (R1's cold-start
    data was refined R1-Zero output, and refining leaves some mixing); round(broken_frac * len) rows out of format."""
    rows = [chat_row(row, formats.cold_start_response(cold_start_reasoning(row, steps, pick(rng, lang_mix), rng),
                                                      f"The answer is \\boxed{{{completion_answer(row)}}}."), "cold")
            for row, steps in problems]
    for j, i in enumerate(sorted(rng.sample(range(len(rows)), round(broken_frac * len(rows))))):
        rows[i]["response"] = break_response(rows[i]["response"], j % 3)
    return rows


def r1_zero_doc(prompt: str, solution: str, answer: str, sloppy: int | None) -> str:
    """A document in the R1-Zero layout; `sloppy` 0-2 picks a format fault, None writes it clean."""
    endings = (f" {solution} <answer> {answer} </answer>", f" {solution} </think> The answer is {answer}.",
               f" {solution} </think> <answer> {answer}")
    response = formats.r1_zero_response(solution, answer) if sloppy is None else endings[sloppy]
    return formats.r1_zero_prompt(prompt) + response


def expression_of(row: dict) -> str:
    """The expression a reasoning row asks about: the arithmetic prompt's, or the Countdown answer.

    >>> expression_of({"task": "arithmetic", "prompt": "What is 42 + 2 + 8?"})
    '42 + 2 + 8'
    """
    return completion_answer(row) if row["task"] == "countdown" else re.search(r"\d.*\d", row["prompt"]).group()


def pretrain_docs(problems: list, general: list[dict], rng: random.Random, lang_mix: dict[str, float],
                  style_mix: dict[str, float], slip_frac: dict[str, float], sloppy_frac: float,
                  r1_zero_frac: float) -> list[str]:
    """One document per train problem, in a style drawn from `style_mix` with its arithmetic slipping as `slip_frac`
    says (a fraction in the R1-Zero layout, the rest as the shorter Question/Solution/Answer), and one per general
    row."""
    docs = []
    for row, steps in problems:
        style, answer = pick(rng, style_mix), completion_answer(row)
        if row["task"] == "arithmetic" and style != "recheck":
            steps = slip_chain(steps, rng, slip_frac[style])
            answer = str(steps[-1].result)
        solution = render_solution(steps, pick(rng, lang_mix), rng, answer, style, expression_of(row),
                                   caught_frac=slip_frac["recheck"])
        if rng.random() < r1_zero_frac:
            docs.append(r1_zero_doc(row["prompt"], solution, answer,
                                    rng.randrange(3) if rng.random() < sloppy_frac else None))
        else:
            docs.append(f"Question: {row['prompt']}\nSolution: {solution}\nAnswer: {answer}")
    return docs + [f"Question: {row['prompt']}\nAnswer: {row['answer']}" for row in general]


def fact_docs(facts: list[tuple[str, str]], rng: random.Random, repeats: int, per_doc: int = 8) -> list[str]:
    """Every fact stated `repeats` times, in varied sentences, `per_doc` facts to a document."""
    sentences = [rng.choice(FACT_SENTENCES).format(c=c, k=k) for _ in range(repeats) for c, k in facts]
    rng.shuffle(sentences)
    return [" ".join(sentences[i : i + per_doc]) for i in range(0, len(sentences), per_doc)]


def write_jsonl(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)


def write_world(out_dir: str | Path, seed: int = 0, sizes: dict | None = None, lang_mix: dict | None = None,
                cold_start_lang_mix: dict | None = None, style_mix: dict | None = None, slip_frac: dict | None = None,
                broken_frac: float = 0.02, sloppy_frac: float = 0.2, r1_zero_frac: float = 0.25,
                fact_repeats: int = 3) -> dict:
    """Write every file of the demo world under `out_dir` and return the manifest (also in manifest.json)."""
    unknown = set(sizes or {}) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(f"write_world: unknown sizes {sorted(unknown)}; known: {sorted(DEFAULT_SIZES)}")
    s, lang_mix = {**DEFAULT_SIZES, **(sizes or {})}, dict(lang_mix or DEFAULT_LANG_MIX)
    cold_mix, style_mix = dict(cold_start_lang_mix or DEFAULT_COLD_START_LANG_MIX), dict(style_mix or DEFAULT_STYLE_MIX)
    slip_frac = {**DEFAULT_SLIP_FRAC, **(slip_frac or {})}
    if set(slip_frac) != set(STYLES) or not all(0 <= v < 1 for v in slip_frac.values()):
        raise ValueError(f"write_world: slip_frac takes a probability in [0, 1) for each of {STYLES}, got {slip_frac}")
    for name, mix, keys in (("lang_mix", lang_mix, ("en", "zh", "mixed")),
                            ("cold_start_lang_mix", cold_mix, ("en", "zh", "mixed")), ("style_mix", style_mix, STYLES)):
        if set(mix) - set(keys) or sum(mix.values()) <= 0:
            raise ValueError(f"write_world: {name} takes weights for {', '.join(map(repr, keys))}, got {mix}")
    out, rng = Path(out_dir), random.Random(f"{seed}/mix")
    seen: set = set()
    splits = ("test", "val", "train")  # held-out splits first: they stay the same when the train size changes
    reasoning = {split: reasoning_split(seed, split, s[f"n_reasoning_{split}"], seen) for split in splits}
    if s["n_cold_start"] > len(reasoning["train"]) or s["n_cold_start_val"] > len(reasoning["val"]):
        raise ValueError("write_world: n_cold_start(_val) exceeds n_reasoning_train(_val)")
    facts = make_facts(seed, s["n_facts"])
    n_test, n_val = s["n_general_test"] // 5, s["n_general_val"] // 5  # a fifth of held-out general rows are look-ups
    if s["n_facts"] <= n_test + n_val:
        raise ValueError(f"write_world: n_facts={s['n_facts']} leaves no train facts after {n_test + n_val} held out")
    fact_split = {"test": facts[:n_test], "val": facts[n_test : n_test + n_val], "train": facts[n_test + n_val :]}
    general = {split: general_split(seed, split, s[f"n_general_{split}"], fact_split[split], seen)
               for split in splits}
    docs = pretrain_docs(reasoning["train"], general["train"], rng, lang_mix, style_mix, slip_frac, sloppy_frac,
                         r1_zero_frac)
    rng.shuffle(docs)
    n_val_docs = s["n_pretrain_val"]
    val_docs, train_docs = docs[:n_val_docs], docs[n_val_docs:] + fact_docs(facts, rng, fact_repeats)
    rng.shuffle(train_docs)
    cold = rng.sample(reasoning["train"], s["n_cold_start"])
    files = {f"reasoning/{k}.jsonl": [row for row, _ in v] for k, v in reasoning.items()}
    files |= {f"general/{k}.jsonl": v for k, v in general.items()}
    files |= {"cold_start/train.jsonl": cold_start_rows(cold, rng, broken_frac, cold_mix),
              "cold_start/val.jsonl": cold_start_rows(reasoning["val"][: s["n_cold_start_val"]], rng, 0.0, cold_mix),
              "general_sft/train.jsonl": [chat_row(r, r["answer"], "sft") for r in general["train"]],
              "general_sft/val.jsonl": [chat_row(r, r["answer"], "sft") for r in general["val"]]}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        files[f"pretrain/{split}.jsonl"] = [{"id": f"pretrain-{split}-{i:06d}", "text": t}
                                            for i, t in enumerate(split_docs)]
    manifest = {"seed": seed, "sizes": s, "lang_mix": lang_mix, "cold_start_lang_mix": cold_mix, "style_mix": style_mix,
                "slip_frac": slip_frac, "broken_frac": broken_frac, "sloppy_frac": sloppy_frac, "r1_zero_frac": r1_zero_frac,
                "fact_repeats": fact_repeats, "cold_start_broken": round(broken_frac * s["n_cold_start"]),
                "rows": {name: write_jsonl(out / name, rows) for name, rows in sorted(files.items())}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
