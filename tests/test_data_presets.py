"""Data people already have, through the data presets (configs/data/{gsm8k,math,messages}_*.yaml and
configs/data/format/): GSM8K-style jsonl, MATH-style parquet, chat `messages` rows in a `datasets` directory, for
cold-start, general, rejection-sampled SFT and RL prompts. Each test writes its small file, composes the preset
through Hydra as `python -m r1lab.train data=<preset> data.train_files=...` would, and loads it.

    pytest tests/test_data_presets.py
"""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from r1lab.data.io import DataError
from r1lab.infra.hf import load_tokenizer
from r1lab.infra.utils import ROOT
from r1lab.maths.formats import cold_start_response, is_cold_start_format

GSM8K = [{"question": f"Tom has {a} boxes of {b} pens. How many pens?",
          "answer": f"He has {a} * {b} = <<{a}*{b}={a * b}>>{a * b} pens.\n#### {a * b:,}"}
         for a, b in [(3, 500), (4, 7), (12, 250), (6, 9), (2, 800), (5, 5)]]
MATH = [{"problem": f"What is $\\frac{{{n}}}{{2}}$ plus one?", "level": "Level 1",
         "solution": f"Half of {n} plus one is $\\boxed{{\\frac{{{n + 2}}}{{2}}}}$."} for n in range(1, 7)]


def chat(i: int, system: bool = False, response: str | None = None) -> dict:
    turns = [{"role": "system", "content": "Answer briefly."}] if system else []
    turns += [{"role": "user", "content": f"What is {i} + {i}?"},
              {"role": "assistant", "content": response or f"{i} + {i} = {2 * i}."}]
    return {"messages": turns, "answer": str(2 * i)}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def write_datasets(path: Path, rows: list[dict]) -> str:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def load_preset(tokenizer_dir: Path, *overrides: str):
    """The data module of configs/train.yaml composed with `overrides` (on the tiny tokenizer), after setup()."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        data = compose("train", overrides=list(overrides)).data
    cfg = OmegaConf.merge({"model": {"path": str(tokenizer_dir)}, "seed": 0}, {"data": data})
    module = instantiate(cfg.data)
    module.setup("fit")
    return module


def responses(module, tokenizer, split: str = "train") -> list[str]:
    """The decoded supervised tokens (labels != -100) of every example of a chat data module, end-of-turn cut."""
    return [tokenizer.decode([t for t in e["labels"] if t != -100]).removesuffix(tokenizer.eos_token)
            for e in module.examples[split]]


def test_gsm8k_jsonl_as_rl_prompts_cold_start_and_general_rows(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    prompts = load_preset(tokenizer_dir, "data=gsm8k_prompts", f"data.train_files={path}", f"data.val_files={path}",
                          "data.batch_size=2")
    assert [r["answer"] for r in prompts.rows["train"]] == ["1500", "28", "3000", "54", "1600", "25"]
    assert [r["prompt"] for r in prompts.rows["val"]] == [r["question"] for r in GSM8K]
    batch = next(iter(prompts.train_dataloader()))
    assert set(batch) >= {"prompt", "answer", "solution"} and len(batch["prompt"]) == 2

    tokenizer = load_tokenizer(tokenizer_dir)
    cold = load_preset(tokenizer_dir, "data=gsm8k_cold_start", f"data.train_files={path}", "data.batch_size=4")
    assert cold.stats["train"]["kept"] == len(GSM8K) and cold.stats["train"]["bad_format"] == 0
    assert responses(cold, tokenizer)[0] == cold_start_response("He has 3 * 500 = 1500 pens.",
                                                                "The answer is \\boxed{1500}.")
    general = load_preset(tokenizer_dir, "data=gsm8k_general", f"data.train_files={path}", "data.batch_size=4")
    assert responses(general, tokenizer)[1] == "He has 4 * 7 = 28 pens.\nThe answer is \\boxed{28}."
    assert next(iter(general.train_dataloader()))["input_ids"].shape[0] == 4

    no_answer = write_jsonl(tmp_path / "bad.jsonl", GSM8K[:2] + [{"question": "q", "answer": "It is 3."}])
    with pytest.raises(DataError, match=r"bad.jsonl:3: field 'answer': no final '#### <answer>' line"):
        load_preset(tokenizer_dir, "data=gsm8k_prompts", f"data.train_files={no_answer}", "data.batch_size=2")


def test_math_parquet_as_rl_prompts_cold_start_and_general_rows(tmp_path, tokenizer_dir):
    path = write_parquet(tmp_path / "math.parquet", MATH)
    prompts = load_preset(tokenizer_dir, "data=math_prompts", f"data.train_files={path}", "data.batch_size=2")
    assert [r["answer"] for r in prompts.rows["train"]] == [f"\\frac{{{n + 2}}}{{2}}" for n in range(1, 7)]
    assert prompts.rows["train"][0]["level"] == "Level 1" and prompts.rows["train"][0]["prompt"] == MATH[0]["problem"]

    tokenizer = load_tokenizer(tokenizer_dir)
    cold = load_preset(tokenizer_dir, "data=math_cold_start", f"data.train_files={path}", f"data.val_files={path}")
    assert cold.stats["val"]["kept"] == len(MATH) and all(map(is_cold_start_format, responses(cold, tokenizer, "val")))
    general = load_preset(tokenizer_dir, "data=math_general", f"data.train_files={path}")
    assert responses(general, tokenizer) == [r["solution"] for r in MATH]

    unboxed = write_parquet(tmp_path / "unboxed.parquet", MATH[:2] + [{**MATH[2], "solution": "It is 2."}] + MATH[3:])
    with pytest.raises(DataError, match=r"unboxed.parquet: row 2: field 'solution': no \\boxed"):
        load_preset(tokenizer_dir, "data=math_prompts", f"data.train_files={unboxed}", "data.batch_size=2")
    skipping = load_preset(tokenizer_dir, "data=math_prompts", f"data.train_files={unboxed}", "data.batch_size=2",
                           "data.on_error=skip")
    assert skipping.stats["train"] == {"rows": 6, "bad_rows": 1, "too_long": 0, "kept": 5}


def test_messages_in_a_datasets_directory_for_sft_and_rl_prompts(tmp_path, tokenizer_dir):
    rows = [chat(i) for i in range(1, 8)]
    path = write_datasets(tmp_path / "chats", rows)
    tokenizer = load_tokenizer(tokenizer_dir)
    general = load_preset(tokenizer_dir, "data=messages_general", f"data.train_files={path}", "data.batch_size=4")
    assert responses(general, tokenizer) == [f"{i} + {i} = {2 * i}." for i in range(1, 8)]
    prompts = load_preset(tokenizer_dir, "data=messages_prompts", f"data.train_files={path}", "data.batch_size=2")
    assert [(r["prompt"], r["answer"]) for r in prompts.rows["train"][:2]] == [("What is 1 + 1?", "2"),
                                                                               ("What is 2 + 2?", "4")]
    with_system = write_datasets(tmp_path / "system", [chat(1, system=True), chat(2)])
    first = load_preset(tokenizer_dir, "data=messages_prompts", f"data.train_files={with_system}", "data.batch_size=2")
    assert first.rows["train"][0]["prompt"] == "Answer briefly.\n\nWhat is 1 + 1?"

    cot = [chat(i, response=cold_start_response(f"{i} + {i} = {2 * i}.", f"\\boxed{{{2 * i}}}")) for i in range(4)]
    cot_path = write_jsonl(tmp_path / "cot.jsonl", cot)
    cold = load_preset(tokenizer_dir, "data=messages_cold_start", f"data.train_files={cot_path}")
    assert cold.stats["train"]["kept"] == 4

    multi = chat(9)
    multi["messages"] += [{"role": "user", "content": "And 9 + 10?"}]
    bad = write_datasets(tmp_path / "multi", rows[:3] + [multi])
    with pytest.raises(DataError, match=r"multi: row 3: field 'messages': expected the turns \[system\] user "
                                        r"\[assistant\], found roles \['user', 'assistant', 'user'\]"):
        load_preset(tokenizer_dir, "data=messages_general", f"data.train_files={bad}")


def test_cold_start_error_names_the_layout_the_row_and_the_other_presets(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    with pytest.raises(DataError) as error:
        load_preset(tokenizer_dir, "data=cold_start", f"data.train_files={path}", "data.val_files=null",
                    "data.columns_map={question: prompt, answer: response}")
    message = str(error.value)
    assert "6 of 6 responses are not in the layout ColdStartDataModule expects" in message
    assert f"first at {path}:1: response 'He has 3 * 500" in message
    assert "`<reasoning_process>...</reasoning_process><summary>...</summary>`" in message
    for name in ("data=general", "GeneralDataModule", "data=gsm8k_cold_start", "data=math_cold_start"):
        assert name in message


def test_rejection_sampled_sft_reads_general_and_val_rows_through_formats(tmp_path, tokenizer_dir):
    """Rejection SFT and distillation (both data=rejection_sampled): the sampler's shards as they are, general chat
    rows from `messages`, held-out reasoning rows from GSM8K."""
    samples = tmp_path / "samples"
    samples.mkdir()
    kept = [{"id": f"s{i}", "prompt": f"What is {i} + 1?",
             "response": cold_start_response(f"{i} + 1 = {i + 1}.", f"\\boxed{{{i + 1}}}")} for i in range(6)]
    write_jsonl(samples / "shard-00000.jsonl", kept)
    (samples / "manifest.json").write_text(json.dumps({"shards": [{"file": "shard-00000.jsonl", "rows": 6}],
                                                       "rows": 6, "counts": {"accepted": 6}}))
    general = write_datasets(tmp_path / "chats", [chat(i) for i in range(4)])
    val = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    data = load_preset(tokenizer_dir, "data=rejection_sampled", f"data.sample_dir={samples}",
                       f"data.general_files={general}", f"data.val_files={val}", "data.batch_size=4",
                       "+data/format@data.general_format=messages_chat",
                       "+data/format@data.val_format=gsm8k_cold_start")
    assert (data.stats["train"]["kept"], data.stats["general"]["kept"], data.stats["val"]["kept"]) == (6, 4, 6)
    assert [part["input_ids"].shape[0] for part in next(iter(data.train_dataloader()))] == [3, 1]   # reasoning, general


def test_mixed_rl_prompts_read_gsm8k_reasoning_rows_and_chat_general_rows(tmp_path, tokenizer_dir):
    """All-scenario RL (data=mixed_prompts): GSM8K reasoning prompts, general prompts from `messages` rows."""
    reasoning = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    general = write_parquet(tmp_path / "chats.parquet", [{**chat(i), "answer": ""} for i in range(3)])
    data = load_preset(tokenizer_dir, "data=mixed_prompts", f"data.train_files={reasoning}", "data.val_files=null",
                       f"data.general_files={general}", "data.batch_size=4",
                       "+data/format@data.row_format=gsm8k_prompt", "+data/format@data.general_format=messages_prompt")
    assert [r["answer"] for r in data.rows["train"]][:2] == ["1500", "28"]
    assert {r["kind"] for r in data.rows["train"]} == {"reasoning"}
    assert [(r["prompt"], r["kind"]) for r in data.rows["general"]][0] == ("What is 0 + 0?", "general")
    batch = next(iter(data.train_dataloader()))
    assert sorted(batch["kind"]) == ["general", "reasoning", "reasoning", "reasoning"]


def test_sampling_and_evaluation_read_the_same_presets(tokenizer_dir, tmp_path):
    """r1lab.sample and r1lab.eval take a row format as the training presets do: GSM8K prompts and MATH prompts."""
    from r1lab import eval as evaluation
    from r1lab.sample import read_prompts

    gsm8k, math = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K), write_jsonl(tmp_path / "math.jsonl", MATH)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        sample_cfg = compose("sample", overrides=[f"model_dir={tokenizer_dir}", f"data.files={gsm8k}",
                                                  "+data/format@data.row_format=gsm8k_prompt"])
        eval_cfg = compose("eval", overrides=[f"model_dir={tokenizer_dir}", f"data.files={math}", "k=1", "limit=2",
                                              "sampling.max_new_tokens=4", "+data/format@data.row_format=math_prompt",
                                              "paths.output_dir=unused"])
    rows = read_prompts(sample_cfg)
    assert [(r["prompt"], r["answer"]) for r in rows[:2]] == [(GSM8K[0]["question"], "1500"),
                                                              (GSM8K[1]["question"], "28")]
    with open_dict(eval_cfg):
        eval_cfg.output_dir = str(tmp_path / "eval")
    evaluation.run(eval_cfg)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["answer"] for s in samples} <= {"\\frac{2}{2}", "\\frac{3}{2}", "\\frac{4}{2}", "\\frac{5}{2}",
                                              "\\frac{6}{2}", "\\frac{7}{2}", "\\frac{8}{2}"} and samples
