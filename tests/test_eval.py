"""Metrics on hand-made groups, the HF rollout engine on a tiny random Llama, and evaluation end to end."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from r1lab.eval import evaluate
from r1lab.infra.report import metrics_table
from r1lab.maths import formats
from r1lab.maths.formats import Template, render_chat, render_r1_zero
from r1lab.maths.metrics import EvalMetrics, majority_vote, score_group
from r1lab.maths.rewards import cold_start_format_reward, extract_answer, r1_zero_format_reward
from r1lab.rollout.engine import Completion, HFRollout, SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
R1_ZERO = Template(render_r1_zero, partial(extract_answer, source="answer"), r1_zero_format_reward)
CHAT = Template(render_chat, partial(extract_answer, source="summary"), cold_start_format_reward)


@pytest.fixture(scope="module")
def model_and_tokenizer(tokenizer_dir):
    from r1lab.infra.hf import load_model, load_tokenizer
    return load_model(tokenizer_dir), load_tokenizer(tokenizer_dir)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ---- metrics --------------------------------------------------------------------------------------------------
def r1(reasoning: str, answer: str) -> str:
    return formats.r1_zero_response(reasoning, answer)


def test_majority_vote_ties_and_none():
    assert majority_vote(["4", "5", "5", "4"]) == "4"
    assert majority_vote([None, "6", None, None]) == "6"
    assert majority_vote([]) is None


def test_eval_metrics_hand_made_groups():
    """Two prompts x 4 samples with known pass@1, cons@4, format, mixing, length, re-checks and terse answers."""
    score = partial(score_group, extract=R1_ZERO.extract, format_reward=R1_ZERO.format_reward)
    group_a = [r1("so 2 + 3 = 5. Check: 5 - 3 = 2", "5"), r1("so 2 + 3 = 5", "5"), r1("2 加 3 等于 6", "6"), " 2 + 3 is 5 <answer> 5"]
    group_b = [r1("so it is 7", "7"), r1("so it is 8", "8"), r1("so it is 8", "8"), r1("我想 9", "9")]
    a = score(group_a, [10, 10, 10, 4], [True, True, True, False], {"answer": "5", "task": "arithmetic"})
    b = score(group_b, [6, 6, 6, 6], [True] * 4, {"answer": "9", "task": "countdown_like"})
    assert a == {"pass@1": 0.5, "cons@k": 1.0, "format": 0.75, "lang_mix": 0.25, "answered": 0.75, "truncated": 0.25,
                 "length": 8.5, "recheck": 0.25, "terse": 0.75}
    assert b["pass@1"] == 0.25 and b["cons@k"] == 0.0 and b["format"] == 1.0 and b["lang_mix"] == 0.25
    metrics = EvalMetrics(k=4)
    metrics.update(a, task="arithmetic")
    metrics.update(b, task="other")
    out = metrics.compute()
    assert out["pass@1"] == pytest.approx(0.375) and out["cons@4"] == 0.5 and out["format"] == pytest.approx(0.875)
    assert out["lang_mix"] == 0.25 and out["length"] == pytest.approx(7.25)
    assert out["pass@1/arithmetic"] == 0.5 and out["pass@1/other"] == 0.25


def test_metrics_table_combines_models():
    table = metrics_table({"base": {"pass@1": 0.1, "prompts": 10}, "cold_start": {"pass@1": 0.6, "format": 0.9}})
    assert table.splitlines()[0] == "| model | pass@1 | prompts | format |"
    assert table.splitlines()[3] == "| cold_start | 0.600 | - | 0.900 |"


# ---- rollout --------------------------------------------------------------------------------------------------
def test_render_chat_ends_with_assistant_header(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    assert render_chat("Hi?", tokenizer) == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"


def test_hf_rollout_shapes_determinism_and_mode(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [render_r1_zero(p) for p in ("What is 2 + 3?", "Compute 40 - 29 - 11.", "Hi")]
    engine = HFRollout(model, tokenizer, batch_size=2)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=12, seed=7)
    rng_state = torch.get_rng_state()
    model.train()
    out = engine.generate(prompts, sampling)
    assert model.training, "the engine must restore training mode"
    assert torch.equal(torch.get_rng_state(), rng_state), "sampling must not consume the global RNG"
    assert [len(group) for group in out] == [3, 3, 3]
    for c in (c for group in out for c in group):
        assert 1 <= len(c.token_ids) <= 12 and c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert c.finished == (c.token_ids[-1] in model.generation_config.eos_token_id)
    again = HFRollout(model, tokenizer, batch_size=2).generate(prompts, sampling)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]
    other = engine.generate(prompts, SamplingConfig(n=3, temperature=1.0, max_new_tokens=12, seed=8))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in out]
    model.eval()
    engine.generate(prompts[:1], sampling)
    assert not model.training


def test_hf_rollout_greedy_and_finished_flag(model_and_tokenizer):
    """Greedy samples are identical; a completion stops at (and includes) an eos id, else runs to max_new_tokens."""
    model, tokenizer = model_and_tokenizer
    prompts = [render_r1_zero("What is 2 + 3?"), render_r1_zero("Reverse 'abc'.")]
    greedy = SamplingConfig(n=2, temperature=0.0, max_new_tokens=6)
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [len(tokenizer) + 5]  # an id the model can never produce
        free = HFRollout(model, tokenizer).generate(prompts, greedy)
        assert all(not c.finished and len(c.token_ids) == 6 for g in free for c in g)
        assert all(g[0].token_ids == g[1].token_ids for g in free)
        stop_at = free[0][0].token_ids[2]  # make the third greedy token of prompt 0 an eos id
        model.generation_config.eos_token_id = [stop_at]
        stopped = HFRollout(model, tokenizer).generate(prompts, greedy)
    finally:
        model.generation_config.eos_token_id = saved
    first = stopped[0][0].token_ids
    assert stopped[0][0].finished and first == free[0][0].token_ids[: first.index(stop_at) + 1] and len(first) <= 3


def test_hf_rollout_ignores_checkpoint_sampling_defaults(model_and_tokenizer):
    """A checkpoint's generation_config (top_k, repetition penalty...) must not change the requested sampling."""
    model, tokenizer = model_and_tokenizer
    prompts, sampling = [render_r1_zero("What is 2 + 3?")], SamplingConfig(n=2, temperature=0.7, max_new_tokens=10)
    plain = HFRollout(model, tokenizer).generate(prompts, sampling)
    config = model.generation_config
    saved = (config.top_k, config.repetition_penalty, config.no_repeat_ngram_size)
    try:
        config.top_k, config.repetition_penalty, config.no_repeat_ngram_size = 1, 5.0, 1
        tweaked = HFRollout(model, tokenizer).generate(prompts, sampling)
    finally:
        config.top_k, config.repetition_penalty, config.no_repeat_ngram_size = saved
    assert [c.token_ids for c in tweaked[0]] == [c.token_ids for c in plain[0]]


# ---- evaluation -----------------------------------------------------------------------------------------------
class OracleEngine:
    """Answers every prompt with the gold R1-Zero completion, except every k-th sample, which is wrong."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, prompts: list[str], sampling: SamplingConfig, done=None) -> list[list[Completion]]:
        def sample(prompt: str, j: int) -> Completion:
            text = r1("so I think", self.answers[prompt] if j < sampling.n - 1 else "wrong")
            return Completion(text=text, token_ids=[1] * 5, finished=True)
        return [[sample(p, j) for j in range(sampling.n)] for p in prompts]


def test_evaluate_with_oracle_engine(world_dir, tokenizer_dir):
    """Known answers through the whole scoring path: pass@1 = (k-1)/k, cons@k = 1, format 1, per-task keys."""
    from r1lab.demo.world import completion_answer
    rows = rows_of(world_dir / "reasoning/test.jsonl") + rows_of(world_dir / "general/test.jsonl")
    answers = {render_r1_zero(r["prompt"]): completion_answer(r) for r in rows}
    result = evaluate(str(tokenizer_dir), rows, R1_ZERO, lambda model, tokenizer: OracleEngine(answers),
                      SamplingConfig(), k=4)
    m = result["metrics"]
    assert m["pass@1"] == pytest.approx(0.75) and m["cons@4"] == 1.0 and m["format"] == 1.0 and m["lang_mix"] == 0.0
    assert m["prompts"] == len(rows) and m["check_failures"] == 0 and m["length"] == 5.0
    assert {k for k in m if k.startswith("pass@1/")} == {f"pass@1/{t}" for t in {r["task"] for r in rows}}
    assert len(result["samples"]) == 8 * 4


def test_evaluate_tiny_model_chat_template(world_dir, tokenizer_dir):
    rows = rows_of(world_dir / "reasoning/test.jsonl")[:3]
    result = evaluate(str(tokenizer_dir), rows, CHAT, partial(HFRollout, batch_size=2),
                      SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=8), k=2)
    m = result["metrics"]
    assert m["prompts"] == 3 and 0 < m["length"] <= 8 and 0.0 <= m["pass@1"] <= m["answered"] <= 1.0
    assert result["samples"][0]["prompt"].endswith("<|im_start|>assistant\n") and result["speed"]["tokens"] > 0


def test_eval_cli_writes_reports(world_dir, tokenizer_dir, tmp_path):
    """`python -m r1lab.eval` with the real configs writes metrics.json, metrics.md and samples.jsonl."""
    cmd = [sys.executable, "-m", "r1lab.eval", f"model_dir={tokenizer_dir}",
           f"paths.world_dir={world_dir}", f"paths.log_dir={tmp_path / 'logs'}", "limit=4", "k=2",
           "sampling.max_new_tokens=8", "template=chat", f"hydra.run.dir={tmp_path / 'run'}", "name=tiny_chat"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "R1LAB_ROOT": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "run/metrics.json").read_text())
    assert report["k"] == 2 and report["sampling"]["temperature"] == 0.6 and report["metrics"]["prompts"] == 4
    assert {"pass@1", "cons@2", "format", "lang_mix", "length"} <= set(report["metrics"])
    assert (tmp_path / "run/metrics.md").read_text().startswith("| model | pass@1 | cons@2 |")
    assert "| tiny_chat |" in proc.stdout
    assert len((tmp_path / "run/samples.jsonl").read_text().splitlines()) == 4 * 2


def test_eval_countdown_rows_need_numbers(world_dir, tokenizer_dir):
    with pytest.raises(ValueError, match="needs a 'numbers' list"):
        evaluate(str(tokenizer_dir), [{"prompt": "p", "answer": "1", "task": "countdown", "id": "x"}], R1_ZERO,
                 partial(HFRollout), SamplingConfig(), k=1)
