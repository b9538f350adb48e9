"""Rewards: answer checking per task, strict formats, language consistency, and robustness to pathological answers."""

import threading
import time
from functools import partial

import pytest

from r1lab.maths import formats, rewards
from r1lab.maths.rewards import (
    accuracy_reward,
    check_answer,
    cold_start_format_reward,
    extract_answer,
    language_consistency,
    language_consistency_reward,
    r1_zero_format_reward,
    weighted_rewards,
)


def read_jsonl(path):
    import json
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def world_rows(world_dir):
    return read_jsonl(world_dir / "reasoning/test.jsonl") + read_jsonl(world_dir / "general/test.jsonl")


@pytest.mark.parametrize("pred, gold, task, numbers, expected", [
    ("59", "59", "arithmetic", [], True),
    ("-4", "-4", "arithmetic", [], True),
    ("058", "58", "arithmetic", [], True),
    ("59.0", "59", "arithmetic", [], False),
    ("fifty-nine", "59", "arithmetic", [], False),
    ("(25 - 5) * 3", "60", "countdown", [25, 5, 3], True),
    ("3*(25-5)", "60", "countdown", [3, 5, 25], True),
    ("(25 - 5) * 3", "60", "countdown", [25, 5, 3, 1], False),      # a number left unused
    ("(25 - 5) * 3 + 0", "60", "countdown", [25, 5, 3], False),     # a number not given
    ("(25 - 5) * 3 * 1 * 1", "60", "countdown", [25, 5, 3, 1], False),  # 1 used twice
    ("(25 - 5) * 3", "61", "countdown", [25, 5, 3], False),         # wrong value
    ("60", "60", "countdown", [60], True),
    ("25 - 5 * 3", "60", "countdown", [25, 5, 3], False),           # precedence matters
    ("(25 - 5) // 1 * 3", "60", "countdown", [25, 5, 3, 1], False),  # division is not allowed
    ("(25 - 5) * 3", "60", "countdown", None, False),               # cannot check without the numbers
    ("__import__('os')", "0", "countdown", [0], False),
    ("gnirts", "gnirts", "reverse", [], True),
    ("GNIRTS", "gnirts", "reverse", [], False),
    ("KALORA", "KALORA", "upper", [], True),
    ("kalora", "KALORA", "upper", [], False),
    ("3", "3", "count", [], True),
    ("3, 15,42", "3, 15, 42", "sort", [], True),
    ("3, 42, 15", "3, 15, 42", "sort", [], False),
    ("  dobar. ", "Dobar", "lookup", [], True),
    ("\\frac{1}{2}", "0.5", None, None, True),
    ("\\boxed{\\frac{6}{4}}", "\\frac{3}{2}", "math", None, True),
    ("7", "0.5", None, None, False),
    (None, "5", "arithmetic", [], False),
])
def test_check_answer(pred, gold, task, numbers, expected):
    assert check_answer(pred, gold, task, numbers) is expected


def test_world_solutions_check(world_rows):
    """Every gold solution of the demo world passes its own checker, in both output formats."""
    from r1lab.demo.world import completion_answer
    for row in world_rows:
        answer = completion_answer(row)
        assert check_answer(answer, row["answer"], row["task"], row["numbers"]), row
        r1 = formats.r1_zero_response(row["solution"] or "It is simple.", answer)
        assert accuracy_reward([r1], answer=[row["answer"]], task=[row["task"]], numbers=[row["numbers"]]) == [1.0]
        assert r1_zero_format_reward([r1]) == [1.0]
    tasks = {"arithmetic", "countdown", "reverse", "upper", "count", "sort", "lookup"}
    assert {row["task"] for row in world_rows} == tasks


def test_world_cold_start_responses_check(world_dir):
    """Clean cold-start rows score 1 on accuracy, format and language; the deliberately broken ones fail the format."""
    import json
    rows = read_jsonl(world_dir / "cold_start/val.jsonl")
    texts = [row["response"] for row in rows]
    columns = {name: [r[name] for r in rows] for name in ("answer", "task", "numbers")}
    assert accuracy_reward(texts, extract=partial(extract_answer, source="summary"), **columns) == [1.0] * len(rows)
    assert cold_start_format_reward(texts) == [1.0] * len(rows)
    consistency = language_consistency_reward(texts)  # a fifth of cold-start CoTs keep Chinese steps (world option)
    has_cjk = lambda t: any("\u4e00" <= ch <= "\u9fff" for ch in t)
    assert all((c < 1.0) == has_cjk(t) for c, t in zip(consistency, texts))
    train = [row["response"] for row in read_jsonl(world_dir / "cold_start/train.jsonl")]
    mixed = [t for t in texts + train if has_cjk(t)]   # a few val rows may have none
    assert 0 < len(mixed) < 0.5 * len(texts + train)
    broken = json.loads((world_dir / "manifest.json").read_text())["cold_start_broken"]
    assert broken > 0 and cold_start_format_reward(train).count(0.0) == broken


@pytest.mark.parametrize("pred", ["9" * 10000, "\\frac{" * 500, "((((" * 1000, "10**10**10", "2^{2^{2^{2^{99}}}}",
                                  "(" * 90 + "1" + ")" * 90, "9" * 199, "\x00\uffff", "\\boxed{" + "1+" * 3000 + "1}"])
@pytest.mark.parametrize("task", ["arithmetic", "countdown", "sort", None])
def test_check_answer_pathological(pred, task):
    start = time.perf_counter()
    assert check_answer(pred, "5", task, [5]) is False
    assert time.perf_counter() - start < 3.0


def test_check_answer_in_thread_counts_no_signal_errors():
    """math-verify's signal-based timeout is skipped off the main thread instead of failing."""
    failures = sum(rewards.CHECK_FAILURES.values())
    out = []
    thread = threading.Thread(target=lambda: out.append(check_answer("\\frac{1}{2}", "0.5")))
    thread.start()
    thread.join(timeout=30)
    assert out == [True]
    assert sum(rewards.CHECK_FAILURES.values()) == failures


def test_check_failures_counted(monkeypatch):
    def broken(pred, gold, numbers):
        raise RuntimeError("bug")
    monkeypatch.setitem(rewards.CHECKERS, "broken", broken)
    before = rewards.CHECK_FAILURES["broken:RuntimeError"]
    assert check_answer("1", "1", "broken") is False
    assert rewards.CHECK_FAILURES["broken:RuntimeError"] == before + 1


def test_extract_answer_sources():
    r1 = " 2 + 3 = 5. </think> <answer> \\boxed{5} </answer>"
    cold = "<reasoning_process>2 + 3 = 5.</reasoning_process><summary>The answer is \\boxed{5}.</summary>"
    assert extract_answer(r1, "answer") == "5"
    assert extract_answer(cold, "summary") == "5"
    assert extract_answer("<summary>5</summary>", "summary") == "5"
    assert extract_answer(cold, "answer") is None
    assert extract_answer(cold, "boxed") == "5"
    with pytest.raises(ValueError, match="source"):
        extract_answer(cold, "last_line")


def test_r1_zero_format_strict():
    ok = [formats.r1_zero_response("2 + 3 = 5.", "5"), "reason</think><answer>5</answer>",
          " a\nb </think>\n<answer>5</answer>\n",
          "\n2 + 3 = 5.\n</think>\n<answer>\n5\n</answer>\n",            # a newline around every tag
          "2 + 3 = 5.</think>\n\n\n<answer>5</answer>\n\n",               # blank lines between the parts and after
          "2 + 3 = 5.\r\n</think>\r\n<answer>5</answer>\r\n",             # Windows line ends
          "  2 + 3 = 5. </think> \t <answer>\t5 </answer>  "]             # tabs and spaces
    bad = [
        " </think> <answer> 5 </answer>",                   # empty reasoning
        " a </think> <answer>  </answer>",                  # empty answer
        " a </think> <answer> 5 </answer> trailing",        # text after the answer
        " a </think> <answer> 5 </answer><answer> 6 </answer>",
        " a </think> </think> <answer> 5 </answer>",        # tag inside the reasoning
        " a </think> <answer> <think> 5 </answer>",         # tag inside the answer
        " a </think> hmm <answer> 5 </answer>",             # text between the parts
        " a </think> <answer> 5",                           # truncated
        "<think> a </think> <answer> 5 </answer>",          # reopens <think>
        formats.cold_start_response("a", "b"),
        "\n \n\t</think>\n<answer>5</answer>",             # a chain of thought of whitespace only
        "2 + 3 = 5. <answer>5</answer>",                    # </think> missing
        "2 + 3 = 5. </think> 5",                            # <answer> tags missing
        "2 + 3 = 5. </think> 5 </answer>",                  # <answer> missing
        "2 + 3 = 5. </think><answer>5</answer>\n<answer>5</answer>",   # <answer> repeated after newlines
        "2 + 3 = 5. </think>\nSo the answer is:\n<answer>5</answer>",  # text between the parts
        "2 + 3 = 5. </think>\n<answer>5</answer>\nHope this helps!",  # text after the answer
        "2 + 3 = 5. </think>\n<answer>\n</answer>",                   # empty answer
    ]
    assert r1_zero_format_reward(ok) == [1.0] * len(ok)
    assert r1_zero_format_reward(bad) == [0.0] * len(bad)


def test_cold_start_format_strict():
    good = formats.cold_start_response("2 + 3 = 5.", "The answer is \\boxed{5}.")
    bad = [
        good.replace("</summary>", ""),
        "<summary>b</summary><reasoning_process>a</reasoning_process>",
        "<reasoning_process>a <think> b</reasoning_process><summary>c</summary>",
        "<reasoning_process>a</reasoning_process> x <summary>c</summary>",
        "<reasoning_process>a</reasoning_process><summary> </summary>",
        good + good,
        formats.r1_zero_response("a", "b"),
        "<reasoning_process>\n\n</reasoning_process>\n<summary>\\boxed{5}</summary>",  # empty chain of thought
        "<reasoning_process>2 + 3 = 5.</reasoning_process>\n\\boxed{5}",                 # <summary> missing
        "2 + 3 = 5.</reasoning_process><summary>\\boxed{5}</summary>",                   # opening tag missing
        "<reasoning_process>a</reasoning_process><summary>5</summary><summary>5</summary>",  # repeated
        "Sure!\n<reasoning_process>a</reasoning_process>\n<summary>5</summary>",        # text before
        "<reasoning_process>a</reasoning_process>\nThus:\n<summary>5</summary>",        # text between
        "<reasoning_process>a</reasoning_process>\n<summary>5</summary>\nDone.",        # text after
    ]
    newlines = ["<reasoning_process>\n2 + 3 = 5.\n</reasoning_process>\n<summary>\n\\boxed{5}\n</summary>\n",
                "\n\n<reasoning_process>2 + 3 = 5.</reasoning_process>\n\n<summary>\\boxed{5}</summary>"]
    assert cold_start_format_reward([good, good + "\n", *newlines]) == [1.0] * 4
    assert cold_start_format_reward(bad) == [0.0] * len(bad)


def test_language_consistency_real_text():
    assert language_consistency("First add the two numbers, then carry the one.") == 1.0
    assert language_consistency("首先把两个数相加。") == 0.0
    assert language_consistency("首先把两个数相加。", target="zh") == 1.0
    assert language_consistency("We add 23 加 45 得到 68.") == pytest.approx(2 / 5)  # We, add vs 加, 得, 到
    assert language_consistency("Réfléchissons étape par étape.", target="fr") == 1.0
    assert language_consistency("Сначала сложим числа, then add.") == pytest.approx(2 / 5)
    assert language_consistency("Сначала сложим", target="ru") == 1.0
    assert language_consistency("12 + 30 = 42; 42 * 2 = 84.") is None
    assert language_consistency("\\frac{1}{2} = 0.5") is None
    with pytest.raises(ValueError, match="unknown target"):
        language_consistency("text", target="xx")


def test_language_consistency_reward_uses_cot_only():
    zh_answer = " So 2 + 3 = 5. </think> <answer> 五 </answer>"
    zh_cot = "<reasoning_process>2 加 3 等于 5。</reasoning_process><summary>The answer is 5.</summary>"
    assert language_consistency_reward([zh_answer, zh_cot, " 1 </think> <answer> 1 </answer>"]) == [1.0, 0.0, None]


def test_weighted_rewards_skip_none_and_check_lengths():
    fns = {"fmt": {"fn": r1_zero_format_reward, "weight": 0.5}, "lang": {"fn": language_consistency_reward}}
    total, raw = weighted_rewards(fns, [" 1 </think> <answer> 1 </answer>", " so </think> <answer> 1 </answer>"], {})
    assert total == [0.5, 1.5] and raw["lang"] == [None, 1.0]
    with pytest.raises(ValueError, match="returned 1 values"):
        weighted_rewards({"bad": {"fn": lambda completions, **_: [1.0]}}, ["a", "b"], {})
