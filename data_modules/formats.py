"""Row formats: the data people already have (GSM8K, MATH, chat `messages`) turned into the rows our modules read.

A data preset (configs/data/gsm8k_prompts.yaml, ...) names one of these functions as `row_format`; r1lab.data.io
applies it to every row after `columns_map` and before checking, so a row it cannot convert is a bad row naming
file, line and field like any other (skipped and counted with `on_error=skip`):

    python -m r1lab.train experiment=r1_zero data=gsm8k_prompts data.train_files=/data/gsm8k/train.jsonl

- GSM8K rows {question, answer: "...worked steps...\\n#### 72"}: the final answer is the text after `####` (thousands
  commas dropped), the worked steps the text before it, calculator annotations `<<48/2=24>>` removed;
- MATH rows {problem, solution}: the final answer is the solution's last `\\boxed{...}` (for RL prompts, a
  row's own non-empty `answer` column wins: MATH-500 has one);
- chat rows {messages: [{role, content}, ...]}: the turns must be `[system] user [assistant]` (system optional); a
  system turn is put before the user's text, separated by a blank line (a single user turn is what our chat encoding
  and R1's prompts use). Longer chats are bad rows.
Every other column of a row is kept (an `answer` next to `messages` reaches the rewards); a converted column that
the row already has is an error rather than overwritten.
Simplifications: no other multi-turn handling; a GSM8K answer is taken as written after `####`.
"""

import re
from typing import Any

from r1lab.data.io import DataError
from r1lab.maths.formats import answer_key, cold_start_response, extract_boxed


def _field(row: dict, name: str, kind: type = str) -> Any:
    """The value of a field the format needs, with a DataError when it is missing or of another type.

    >>> _field({"question": 3}, "question")
    Traceback (most recent call last):
    ...
    r1lab.data.io.DataError: field 'question': expected str, got int
    """
    if name not in row:
        raise DataError(f"missing field '{name}' (this data preset reads it); fields present: {sorted(row)}")
    if not isinstance(row[name], kind):
        raise DataError(f"field '{name}': expected {kind.__name__}, got {type(row[name]).__name__}")
    return row[name]


def _replace(row: dict, used: tuple[str, ...], new: dict) -> dict:
    """`row` without its `used` fields, plus `new`; a new field the rest of the row already has is an error.

    >>> _replace({"question": "q", "answer": "a", "id": 1}, ("question", "answer"), {"prompt": "q", "answer": "1"})
    {'id': 1, 'prompt': 'q', 'answer': '1'}
    """
    rest = {k: v for k, v in row.items() if k not in used}
    clash = sorted(set(rest) & set(new))
    if clash:
        raise DataError(f"field '{clash[0]}': the row has it already and this data preset would overwrite it")
    return rest | new


def split_gsm8k(solution: str) -> tuple[str, str]:
    """(worked steps, final answer) of a GSM8K solution ending in `#### n`.

    >>> split_gsm8k("He buys 2 * 600 = <<2*600=1200>>1200 pens.\\n#### 1,200")
    ('He buys 2 * 600 = 1200 pens.', '1200')
    >>> split_gsm8k("It is 7.")
    Traceback (most recent call last):
    ...
    r1lab.data.io.DataError: field 'answer': no final '#### <answer>' line (GSM8K layout: worked steps, then '#### 72')
    """
    steps, sep, _ = solution.rpartition("####")
    final = answer_key(solution) if sep else ""   # the reward's reading of a GSM8K gold, thousands commas dropped
    if not final:
        raise DataError("field 'answer': no final '#### <answer>' line (GSM8K layout: worked steps, then '#### 72')")
    return re.sub(r"<<[^<>]*>>", "", steps).strip(), final


def _gsm8k_steps(row: dict) -> tuple[str, str]:
    steps, final = split_gsm8k(_field(row, "answer"))
    if not steps:
        raise DataError("field 'answer': no worked steps before '####' (an SFT response needs them)")
    return steps, final


def gsm8k_prompt(row: dict) -> dict:
    """An RL prompt from a GSM8K row: prompt = question, answer = the text after `####`, solution = the full answer.

    >>> gsm8k_prompt({"question": "2 + 3?", "answer": "2 + 3 = 5\\n#### 5", "id": 4})
    {'id': 4, 'prompt': '2 + 3?', 'answer': '5', 'solution': '2 + 3 = 5\\n#### 5'}
    """
    _, final = split_gsm8k(_field(row, "answer"))
    return _replace(row, ("question", "answer"),
                    {"prompt": _field(row, "question"), "answer": final, "solution": row["answer"]})


def gsm8k_cold_start(row: dict) -> dict:
    """A cold-start SFT row from a GSM8K row: the worked steps as the reasoning, the boxed answer as the summary.

    >>> gsm8k_cold_start({"question": "2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\\n#### 5"})["response"]
    '<reasoning_process>2 + 3 = 5</reasoning_process><summary>The answer is \\\\boxed{5}.</summary>'
    """
    steps, final = _gsm8k_steps(row)
    response = cold_start_response(steps, f"The answer is \\boxed{{{final}}}.")
    return _replace(row, ("question", "answer"), {"prompt": _field(row, "question"), "response": response})


def gsm8k_chat(row: dict) -> dict:
    """A plain chat SFT row from a GSM8K row (general SFT, no reasoning tags): the worked steps, then the answer.

    >>> gsm8k_chat({"question": "2 + 3?", "answer": "2 + 3 = 5\\n#### 5"})["response"]
    '2 + 3 = 5\\nThe answer is \\\\boxed{5}.'
    """
    steps, final = _gsm8k_steps(row)
    return _replace(row, ("question", "answer"),
                    {"prompt": _field(row, "question"), "response": f"{steps}\nThe answer is \\boxed{{{final}}}."})


def math_answer(solution: str) -> str:
    r"""The final answer of a MATH solution: its last `\boxed{...}`.

    >>> math_answer(r"Half of 3 is $\boxed{\frac{3}{2}}$.")
    '\\frac{3}{2}'
    >>> math_answer("It is 7.")
    Traceback (most recent call last):
    ...
    r1lab.data.io.DataError: field 'solution': no \boxed{...} final answer (or its braces are unbalanced)
    """
    final = extract_boxed(solution)
    if not final:
        raise DataError("field 'solution': no \\boxed{...} final answer (or its braces are unbalanced)")
    return final


def math_prompt(row: dict) -> dict:
    r"""An RL prompt from a MATH row: prompt = problem, answer = the solution's last `\boxed{}`, or the row's own
    non-empty `answer` column where it has one (MATH-500 does); solution kept.

    >>> math_prompt({"problem": "1/2 + 1?", "solution": r"It is $\boxed{\frac{3}{2}}$.", "level": "Level 1"})
    {'solution': 'It is $\\boxed{\\frac{3}{2}}$.', 'level': 'Level 1', 'prompt': '1/2 + 1?', 'answer': '\\frac{3}{2}'}
    >>> math_prompt({"problem": "1/2 + 1?", "solution": "It is 3/2.", "answer": "3/2"})["answer"]
    '3/2'
    """
    own = row.get("answer")
    final = str(own).strip() if own is not None and str(own).strip() else math_answer(_field(row, "solution"))
    return _replace(row, ("problem", "answer"), {"prompt": _field(row, "problem"), "answer": final})


def math_cold_start(row: dict) -> dict:
    r"""A cold-start SFT row from a MATH row: the solution as the reasoning, its boxed answer as the summary.

    >>> math_cold_start({"problem": "1 + 1?", "solution": r"1 + 1 = $\boxed{2}$."})["response"]
    '<reasoning_process>1 + 1 = $\\boxed{2}$.</reasoning_process><summary>The answer is \\boxed{2}.</summary>'
    """
    solution = _field(row, "solution")
    response = cold_start_response(solution.strip(), f"The answer is \\boxed{{{math_answer(solution)}}}.")
    return _replace(row, ("problem", "solution"), {"prompt": _field(row, "problem"), "response": response})


def split_messages(messages: Any) -> tuple[str, str | None]:
    """(prompt, assistant reply or None) of chat turns `[system] user [assistant]`; a system turn goes before the
    user's text, separated by a blank line.

    >>> split_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"},
    ...                 {"role": "assistant", "content": "5"}])
    ('Be brief.\\n\\n2 + 3?', '5')
    >>> split_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
    ...                 {"role": "user", "content": "bye"}])
    Traceback (most recent call last):
    ...
    r1lab.data.io.DataError: field 'messages': expected the turns [system] user [assistant], found roles ['user', \
'assistant', 'user'] (multi-turn chats are not supported)
    """
    if not isinstance(messages, list):
        raise DataError(f"field 'messages': expected a list of {{role, content}} turns, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"field 'messages': turn {i} is not {{role: str, content: str}}: {str(m)[:80]}")
    roles = [m["role"] for m in messages]
    system = roles[:1] == ["system"]
    if roles[system:] not in (["user"], ["user", "assistant"]):
        raise DataError(f"field 'messages': expected the turns [system] user [assistant], found roles {roles} "
                        "(multi-turn chats are not supported)")
    prompt = messages[1 if system else 0]["content"]
    if system:
        prompt = f"{messages[0]['content'].strip()}\n\n{prompt}"
    return prompt, messages[-1]["content"] if roles[-1] == "assistant" else None


def messages_chat(row: dict) -> dict:
    """A chat SFT row from a `messages` row: prompt = the (system and) user turn, response = the assistant turn.

    >>> messages_chat({"messages": [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}]})
    {'prompt': '2 + 3?', 'response': '5'}
    """
    prompt, response = split_messages(_field(row, "messages", list))
    if response is None:
        raise DataError("field 'messages': no assistant turn after the user's (an SFT row needs the response)")
    return _replace(row, ("messages",), {"prompt": prompt, "response": response})


def messages_prompt(row: dict) -> dict:
    """An RL prompt from a `messages` row: prompt = the (system and) user turn; a reference assistant turn is
    dropped; the gold answer comes from the row's own `answer` column.

    >>> messages_prompt({"messages": [{"role": "user", "content": "2 + 3?"}], "answer": 5})
    {'answer': 5, 'prompt': '2 + 3?'}
    """
    prompt, _ = split_messages(_field(row, "messages", list))
    return _replace(row, ("messages",), {"prompt": prompt})
