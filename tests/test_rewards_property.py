"""Property-based tests of the rule rewards (hypothesis): whatever a policy writes, answer extraction, answer checking
and the format and language rewards return a valid value in bounded time and never raise into the training loop;
checker errors and timeouts are counted in r1lab.maths.rewards.CHECK_FAILURES (GRPO logs them as train/reward_errors).

    pytest tests/test_rewards_property.py
"""

import time
from functools import partial

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from r1lab.maths import rewards
from r1lab.maths.formats import extract_boxed, extract_tag, reasoning_of, summary_of
from r1lab.maths.rewards import (
    CHECKERS,
    MATH_TIMEOUT_S,
    accuracy_reward,
    check_answer,
    check_failures,
    cold_start_format_reward,
    extract_answer,
    judge_answer,
    language_consistency_reward,
    r1_zero_format_reward,
)

LIMIT_S = 3 * MATH_TIMEOUT_S + 2   # a math check: two parses and a comparison, each under the time limit
FAST_S = 1.0                       # extraction and the format/language rewards: no solver involved
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.data_too_large])

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<reasoning_process>", "</reasoning_process>", "<summary>",
          "</summary>", "\\boxed{", "\\frac{", "\\sqrt{", "{", "}", "(", ")", "^", "**", "+", "-", "*", "/", "!", "9",
          "10", "0.5", "e", "x", "\\pi", "\\infty", "=", ",", ".", " ", "\n", "\x00", "所以", "é", "\\", "$", "%"]
# text a degenerate policy writes: tag soup, deep nesting, runs of digits, nulls, other scripts
hostile = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(PIECES), max_size=200).map("".join),
    st.builds(lambda piece, n: piece * n, st.sampled_from(PIECES), st.integers(1, 20000)),
    st.builds(lambda a, b, n: a * n + b * n, st.sampled_from(PIECES), st.sampled_from(PIECES), st.integers(1, 3000)),
)
DEEP = ["\\frac{" * 5000, "9" * 100000, "1" + "0" * 10000, "\\boxed{" * 5000 + "1", "{" * 5000 + "}" * 4999,
        "<answer>" * 20000, "<reasoning_process>" * 10000 + "</summary>", "\x00" * 1000, "(" * 1000 + "1" + ")" * 1000,
        "999999999^999999999", "<answer>" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "</answer>"]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


@PROPERTY
@given(text=hostile)
@example(text="\\frac{" * 5000).via("deep LaTeX")
@example(text="9" * 100000).via("a huge number")
@example(text="<answer>" * 20000).via("unclosed tags (quadratic in a regex)")
@example(text="<answer>\x00</answer>\x00<summary>\\boxed{\x00}</summary>").via("null bytes")
def test_extraction_and_format_rewards_are_total_and_fast(text):
    for fn, args in [(extract_tag, ("answer",)), (extract_tag, ("reasoning_process",)), (extract_boxed, ()),
                     (reasoning_of, ()), (summary_of, ())]:
        out, seconds = timed(fn, text, *args)
        assert out is None or isinstance(out, str)
        assert seconds < FAST_S, (fn.__name__, seconds)
    for source in ("answer", "summary", "boxed"):
        out, seconds = timed(extract_answer, text, source)
        assert (out is None or isinstance(out, str)) and seconds < FAST_S
    for reward in (r1_zero_format_reward, cold_start_format_reward):
        out, seconds = timed(reward, [text])
        assert out in ([0.0], [1.0]) and seconds < FAST_S
    (value,), seconds = timed(language_consistency_reward, [text])
    assert (value is None or 0.0 <= value <= 1.0) and seconds < FAST_S


@PROPERTY
@given(pred=hostile, gold=st.one_of(st.sampled_from(["42", "-7", "0.5", "\\frac{1}{2}", "3, 15, 42", "Paris", ""]),
                                    st.text(max_size=40)),
       task=st.sampled_from([*CHECKERS, None, "math"]),
       numbers=st.one_of(st.none(), st.lists(st.integers(-10**30, 10**30), max_size=6)))
@example(pred="9" * 100000, gold="9" * 100000, task="arithmetic", numbers=None).via("huge integers")
@example(pred="1" + "0" * 10000, gold="1", task=None, numbers=None).via("10**10000 as text")
@example(pred="(" * 150 + "1" + ")" * 150, gold="1", task="countdown", numbers=[1]).via("deep parentheses")
@example(pred="1" + " * 9" * 60, gold="9" * 70, task="countdown", numbers=[1] + [9] * 60).via("a long product")
def test_checking_never_raises_and_is_bounded(pred, gold, task, numbers):
    out, seconds = timed(check_answer, pred, gold, task, numbers)
    assert out in (True, False)
    assert seconds < LIMIT_S, seconds
    verdict, seconds = timed(judge_answer, pred, gold, task, numbers)   # None: the gold cannot be judged
    assert verdict in (True, False, None) and (verdict is None) <= (check_answer(pred, gold, task, numbers) is False)
    assert seconds < LIMIT_S, seconds


@PROPERTY
@given(gold=st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=40))
@example(gold="Paris").via("a capital")
@example(gold="\u00a0Zürich\u3000").via("other spaces, an accent")
def test_a_plain_text_gold_scores_its_exact_answer(gold):
    """Words are compared as text (math-verify reads "Paris" as nothing), so the gold itself always scores 1."""
    assert judge_answer(gold, gold) is (True if gold.strip() else None)
    assert accuracy_reward([f" so </think> <answer> {gold} </answer>"], answer=[gold]) == \
        [1.0 if gold.strip() else None]


@pytest.mark.parametrize("text", DEEP, ids=range(len(DEEP)))
def test_accuracy_reward_on_hostile_completions(text):
    """The whole reward on a batch: one float per completion, each task's checker, whatever the completion is."""
    tasks = [*CHECKERS, None]
    completions = [f" ok </think> <answer> {text} </answer>", text, f"<summary>\\boxed{{{text}}}</summary>"]
    for source in ("answer", "summary", "boxed"):
        for task in tasks:
            numbers = [3, 5, 25] if task == "countdown" else None
            out, seconds = timed(accuracy_reward, completions, answer=["60"] * 3, task=[task] * 3,
                                 numbers=[numbers] * 3, extract=partial(extract_answer, source=source))
            assert out in ([0.0] * 3, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]) or set(out) <= {0.0, 1.0}
            assert len(out) == 3 and seconds < 3 * LIMIT_S, (source, task, seconds)


def test_a_solver_that_would_hang_is_cut_off_and_counted():
    before = rewards.CHECK_FAILURES["math:TimeoutException"]
    out, seconds = timed(check_answer, "999999999^999999999", "1")  # sympy would compute 9e9 digits
    assert out is False and seconds < LIMIT_S
    assert rewards.CHECK_FAILURES["math:TimeoutException"] == before + 1


def test_oversized_and_power_tower_answers_are_refused_and_counted():
    before = check_failures()
    assert not check_answer("\\frac{" * 5000, "1") and not check_answer("10^{10^{10}}", "1")
    assert check_failures() == before + 2 and rewards.CHECK_FAILURES["math:refused"] >= 2


def test_a_checker_error_is_counted_not_raised(monkeypatch):
    def broken(pred, gold, numbers):
        raise MemoryError("the checker ran out of memory")

    monkeypatch.setitem(rewards.CHECKERS, "arithmetic", broken)
    before = check_failures()
    assert accuracy_reward([" x </think> <answer> 1 </answer>"] * 2, answer=["1", "1"],
                           task=["arithmetic", "arithmetic"]) == [0.0, 0.0]
    assert check_failures() == before + 2 and rewards.CHECK_FAILURES["arithmetic:MemoryError"] >= 2


def test_grpo_logs_the_failures_of_a_step(compose_train, monkeypatch):
    """train/reward_errors: the checker failures of the step's rollout (here every completion's check fails)."""
    from r1lab.train import train

    def broken(pred, gold, numbers):
        raise ValueError("broken checker")

    monkeypatch.setitem(rewards.CHECKERS, "arithmetic", broken)
    monkeypatch.setitem(rewards.ANSWER_SOURCES, "answer", lambda text: "1")
    metrics = train(compose_train("experiment=r1_zero", "debug=fdr", "data.batch_size=2", "module.sampling.n=2",
                                  "module.sampling.max_new_tokens=4", "logger=none", "callbacks=none"))
    assert metrics["train/reward_errors"] == 4.0
