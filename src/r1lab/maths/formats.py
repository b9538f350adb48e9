"""Text formats of the R1 pipeline: prompt templates, response layouts, and tag extraction.

R1-Zero prompts a base model with a plain-text template and expects `<think>...</think><answer>...</answer>`.
The cold-start stage (and every chat stage after it) answers through the chat template with
`<reasoning_process>...</reasoning_process><summary>...</summary>`, the final answer boxed in the summary.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

THINK, ANSWER = "think", "answer"
REASONING, SUMMARY = "reasoning_process", "summary"
TAGS = tuple(f"<{p}{t}>" for t in (THINK, ANSWER, REASONING, SUMMARY) for p in ("", "/"))

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The User asks a question and the Assistant solves it. "
    "The Assistant first reasons step by step inside <think> </think> tags, then gives the final answer "
    "inside <answer> </answer> tags.\nUser: {prompt}\nAssistant: <think>"
)


def r1_zero_prompt(prompt: str) -> str:
    """The R1-Zero prompt; the completion continues right after the opening `<think>` tag.

    >>> r1_zero_prompt("What is 2 + 3?").endswith("User: What is 2 + 3?\\nAssistant: <think>")
    True
    """
    return R1_ZERO_TEMPLATE.format(prompt=prompt)


def r1_zero_response(reasoning: str, answer: str) -> str:
    """A completion of `r1_zero_prompt` (it starts inside the open `<think>`).

    >>> r1_zero_response("2 + 3 = 5.", "5")
    ' 2 + 3 = 5. </think> <answer> 5 </answer>'
    """
    return f" {reasoning} </think> <answer> {answer} </answer>"


def cold_start_response(reasoning: str, summary: str) -> str:
    """An assistant message in the cold-start format.

    >>> cold_start_response("2 + 3 = 5.", "The answer is \\\\boxed{5}.")
    '<reasoning_process>2 + 3 = 5.</reasoning_process><summary>The answer is \\\\boxed{5}.</summary>'
    """
    return f"<{REASONING}>{reasoning}</{REASONING}><{SUMMARY}>{summary}</{SUMMARY}>"


def extract_tag(text: str, tag: str) -> str | None:
    """Content of the last complete `<tag>...</tag>` span, stripped; None if there is none.

    >>> extract_tag("<answer> 1 </answer> <answer> 7 </answer>", "answer")
    '7'
    >>> extract_tag("<answer> 7", "answer") is None, extract_tag("<answer><answer> 2 </answer> 3 </answer>", "answer")
    (True, '<answer> 2')
    """
    # what re.findall(rf"<{tag}>(.*?)</{tag}>") returns last, in linear time: the regex rescans the rest of the text
    # from every unclosed opening tag, and "<answer>" * 20000 took 90 s
    opening, closing = f"<{tag}>", f"</{tag}>"
    found, pos = None, 0
    while (start := text.find(opening, pos)) >= 0:
        end = text.find(closing, start + len(opening))
        if end < 0:
            break
        found, pos = text[start + len(opening):end], end + len(closing)
    return None if found is None else found.strip()


def extract_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}`, with nested braces balanced; None if absent or unbalanced.

    >>> extract_boxed(r"so \boxed{\frac{1}{2}} and \boxed{7}")
    '7'
    >>> extract_boxed(r"\boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed{oops") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return text[begin:i].strip()
    return None


def answer_key(gold: str) -> str:
    r"""The answer a gold field holds: what follows the last `####` (a GSM8K solution; thousands commas dropped),
    else the last `\boxed{}` (a MATH solution), else the whole field; stripped. "" when there is none.

    >>> answer_key("She pays 3 x 414 = 1,242 dollars.\n#### 1,242"), answer_key(r"so $x = \boxed{\frac{1}{2}}$.")
    ('1242', '\\frac{1}{2}')
    >>> answer_key(" Paris "), answer_key("3, 15, 42"), answer_key("#### "), answer_key(r"\boxed{oops")
    ('Paris', '3, 15, 42', '', '\\boxed{oops')
    """
    if "####" in gold:
        return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", gold.rsplit("####", 1)[1]).strip()
    boxed = extract_boxed(gold)
    return gold.strip() if boxed is None else boxed


def reasoning_of(text: str) -> str:
    """The chain of thought of a response in either format (the whole text if it has no CoT tags).

    >>> reasoning_of("<reasoning_process>a b</reasoning_process><summary>c</summary>")
    'a b'
    >>> reasoning_of(" 1 + 1 = 2. </think> <answer> 2 </answer>")
    '1 + 1 = 2.'
    """
    for tag in (REASONING, THINK):
        found = extract_tag(text, tag)
        if found is not None:
            return found
    if f"</{THINK}>" in text:  # R1-Zero completions start inside the prompt's open <think>
        return text.split(f"</{THINK}>")[0].strip()
    return text.strip()


def summary_of(text: str) -> str:
    """What a response says after its chain of thought: the <summary> content, else the text after the closing
    reasoning (or think) tag, else the whole text (an answer given without a chain of thought).

    >>> summary_of("<reasoning_process>It is 5.</reasoning_process><summary>\\\\boxed{5}</summary>")
    '\\\\boxed{5}'
    >>> summary_of(" 2 + 3 = 5. </think> <answer> 5 </answer>"), summary_of("SIKIR")
    ('<answer> 5 </answer>', 'SIKIR')
    """
    found = extract_tag(text, SUMMARY)
    if found is not None:
        return found
    for tag in (REASONING, THINK):
        if f"</{tag}>" in text:
            return text.rsplit(f"</{tag}>", 1)[1].strip()
    return text.strip()


@dataclass
class Template:
    """How a stage talks to the model: render(prompt, tokenizer) -> text, extract(text) -> answer, format_reward,
    and `stop`, the strings that end a completion under this template (configs/sampling/ and GRPO's sampling take
    them as `stop: ${template.stop}`)."""

    render: Callable[..., str]
    extract: Callable[[str], str | None]
    format_reward: Callable[[list[str]], list[float]]
    stop: list[str] = field(default_factory=list)


def render_r1_zero(prompt: str, tokenizer: "PreTrainedTokenizerBase | None" = None) -> str:
    """The R1-Zero plain-text prompt for a base model (`tokenizer` is unused; every renderer takes it).

    >>> render_r1_zero("What is 2 + 3?").endswith("Assistant: <think>")
    True
    """
    return r1_zero_prompt(prompt)


def render_chat(prompt: str, tokenizer: "PreTrainedTokenizerBase") -> str:
    """One user turn through the tokenizer's chat template, ending with the assistant header."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


NO_TAG = rf"(?:(?!{'|'.join(map(re.escape, TAGS))}).)"  # one character that does not start any R1 tag


COLD_START_FORMAT = re.compile(  # whitespace and newlines around the tags are fine: real chat models write them
    rf"^\s*<{REASONING}>(?P<think>{NO_TAG}*)</{REASONING}>\s*<{SUMMARY}>(?P<answer>{NO_TAG}*)</{SUMMARY}>\s*$",
    re.DOTALL)


def layout_ok(pattern: re.Pattern, text: str) -> bool:
    match = pattern.match(text)
    return match is not None and bool(match["think"].strip()) and bool(match["answer"].strip())


def is_cold_start_format(text: str) -> bool:
    r"""The cold-start layout check shared by the format reward and the cold-start data module.

    >>> is_cold_start_format("<reasoning_process>a<think>b</think></reasoning_process><summary>5</summary>")
    False
    >>> is_cold_start_format("<reasoning_process>\n2 + 3 = 5\n</reasoning_process>\n\n<summary>\\boxed{5}</summary>\n")
    True
    >>> is_cold_start_format("Sure! <reasoning_process>a</reasoning_process><summary>5</summary>")  # text outside
    False
    >>> is_cold_start_format("<reasoning_process> </reasoning_process>\n<summary>5</summary>")  # empty chain of thought
    False
    """
    return layout_ok(COLD_START_FORMAT, text)
