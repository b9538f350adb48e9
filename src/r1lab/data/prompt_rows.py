"""Prompt rows for checked rewards, shared by the RL data modules (data_modules/prompts.py) and the rejection sampler
(r1lab.sample, which so starts without importing Lightning): what makes a row unusable, and dropping long prompts."""


def prompt_row_problem(row: dict, kind: str | None = None) -> str | None:
    """What makes a prompt row unusable for checked rewards, or None (`kind` is the default for rows without one):
    a row of any kind but `general` needs a non-blank gold answer, a countdown row its list of numbers.

    >>> prompt_row_problem({"prompt": "2+2?", "answer": " "}), prompt_row_problem({"answer": "", "kind": "general"})
    ("field 'answer' is empty (a gold answer is needed unless the row's kind is 'general')", None)
    >>> prompt_row_problem({"answer": "7", "task": "countdown", "numbers": "3 4"})
    "field 'numbers': task 'countdown' needs a list of numbers, got str"
    """
    if row.get("kind", kind) != "general" and not str(row.get("answer", "")).strip():
        return "field 'answer' is empty (a gold answer is needed unless the row's kind is 'general')"
    if row.get("task") == "countdown" and not isinstance(row.get("numbers"), list):
        return f"field 'numbers': task 'countdown' needs a list of numbers, got {type(row.get('numbers')).__name__}"
    return None


def drop_long_prompts(rows: list[dict], tokenizer, max_tokens: int | None) -> tuple[list[dict], int]:
    """The rows whose prompt is at most `max_tokens` tokens (all when None), and how many were dropped."""
    if max_tokens is None:
        return rows, 0
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in rows], add_special_tokens=False).input_ids]
    kept = [r for r, n in zip(rows, lengths, strict=True) if n <= max_tokens]
    return kept, len(rows) - len(kept)
