"""Data loading and batching: r1lab.data.io.read_rows, data_modules/*, configs/data/*.yaml.

    pytest tests/test_data.py

Uses the session tokenizer from tests/conftest.py (`tokenizer_dir`) when it exists, else builds a small one here.
"""

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_modules import ChatDataModule, ColdStartDataModule, GeneralDataModule, TextDataModule  # noqa: E402
from data_modules.common import BucketBatchSampler, bucket_batches, padding_fraction  # noqa: E402
from r1lab.data.encode import encode_chat  # noqa: E402
from r1lab.data.io import DataError, read_rows  # noqa: E402
from r1lab.infra.hf import load_tokenizer  # noqa: E402
from r1lab.maths.formats import cold_start_response  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = [f"What is {a} + {b}?" for a, b in [(12, 30), (7, 8), (123, 456), (5, 95), (40, 2), (66, 77)]]


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_row(i: int, response: str | None = None) -> dict:
    a, b = 3 + i, 40 + 7 * i
    return {"id": f"r{i}", "prompt": f"What is {a} + {b}?", "answer": str(a + b), "numbers": [],
            "response": response or cold_start_response(f"{a} + {b} = {a + b}." * (1 + i % 4), f"\\boxed{{{a + b}}}")}


def test_prompt_mask_is_exact_token_by_token(tokenizer):
    prompt, response = "What is 12 + 30?", cold_start_response("12 + 30 = 42.", "The answer is \\boxed{42}.")
    input_ids, labels = encode_chat(tokenizer, prompt, response)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    n = len(prompt_ids)
    assert input_ids[:n] == prompt_ids and len(input_ids) == len(labels) > n
    assert labels[:n] == [-100] * n and -100 not in labels[n:] and labels[n:] == input_ids[n:]
    assert tokenizer.decode(labels[n:]) == response + "<|im_end|>"
    assert labels[-1] == tokenizer.eos_token_id


def test_chat_batches_are_right_padded_with_masked_labels(tmp_path, tokenizer_dir, tokenizer):
    rows = [chat_row(i) for i in range(10)]
    data = GeneralDataModule(write_jsonl(tmp_path / "t.jsonl", rows), None, str(tokenizer_dir), batch_size=4)
    data.setup("fit")
    expected = {tuple(encode_chat(tokenizer, r["prompt"], r["response"])[0]): r for r in rows}
    seen = 0
    for batch in data.train_dataloader():
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert all(t.dtype == torch.long and t.shape == batch["input_ids"].shape for t in batch.values())
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # right padding
            assert (ids[n:] == tokenizer.pad_token_id).all() and (labels[n:] == -100).all()
            row = expected[tuple(ids[:n].tolist())]
            assert labels[:n].tolist() == encode_chat(tokenizer, row["prompt"], row["response"])[1]
            seen += 1
    assert seen == 10 and data.val_dataloader() == []


BAD_ROWS = {  # name -> (raw second line, error fragment)
    "truncated_json": (b'{"prompt": "2 + 2?", "respo', "invalid JSON"),
    "non_utf8": (b'{"prompt": "caf\xe9", "response": "x"}', "not valid UTF-8"),
    "not_object": (b'["prompt", "response"]', "expected a JSON object, got list"),
    "missing_field": (b'{"prompt": "2 + 2?"}', "missing field 'response'"),
    "wrong_type": (b'{"prompt": 4, "response": "x"}', "field 'prompt': expected str, got int"),
    "empty_prompt": (b'{"prompt": "  ", "response": "x"}', "field 'prompt' is empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_jsonl_rows_fail_with_file_line_and_field(tmp_path, name):
    raw, fragment = BAD_ROWS[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "1 + 1?", "response": "2"}\n\n' + raw + b"\n")  # blank line 2 is skipped
    with pytest.raises(DataError) as err:
        read_rows(path, {"prompt": str, "response": str}, nonempty=("prompt", "response"))
    assert f"{path}:3: " in str(err.value) and fragment in str(err.value)


def test_jsonl_reading_keeps_extra_columns_and_rejects_empty_inputs(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [{"question": "1 + 1?", "answer": "2", "numbers": [1, 1]}])
    assert read_rows(path, {"prompt": str, "numbers": list}, rename={"question": "prompt"}) == \
        [{"prompt": "1 + 1?", "answer": "2", "numbers": [1, 1]}]
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        read_rows(tmp_path / "empty.jsonl", {"prompt": str})
    (tmp_path / "nodata").mkdir()
    with pytest.raises(DataError, match="no .jsonl or .parquet files"):
        read_rows(tmp_path / "nodata", {"prompt": str})
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_rows(tmp_path / "missing.jsonl", {"prompt": str})
    with pytest.raises(FileNotFoundError, match="no_such_local_dataset"):
        read_rows("no_such_local_dataset", {"prompt": str})


def test_parquet_and_datasets_sources_with_column_mapping(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    theirs = [{"question": f"q{i}", "cot": f"r{i}", "level": i} for i in range(4)]
    ours = [{"prompt": f"q{i}", "response": f"r{i}", "level": i} for i in range(4)]
    columns, rename = {"prompt": str, "response": str}, {"question": "prompt", "cot": "response"}
    (tmp_path / "dir").mkdir()
    pq.write_table(pa.Table.from_pylist(theirs[:2]), tmp_path / "dir" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(theirs[2:]), tmp_path / "dir" / "b.parquet")
    assert read_rows(tmp_path / "dir", columns, rename) == ours  # a directory: files in sorted order
    datasets.Dataset.from_list(theirs).save_to_disk(str(tmp_path / "saved"))
    assert read_rows(tmp_path / "saved", columns, rename) == ours
    datasets.DatasetDict({"test": datasets.Dataset.from_list(theirs)}).save_to_disk(str(tmp_path / "saved_dict"))
    assert read_rows(tmp_path / "saved_dict", columns, rename, split="test") == ours
    with pytest.raises(DataError, match="no split 'train'"):
        read_rows(tmp_path / "saved_dict", columns, rename)
    (tmp_path / "hub" / "data").mkdir(parents=True)  # a hub-style layout, read by datasets.load_dataset
    write_jsonl(tmp_path / "hub" / "data" / "train.jsonl", theirs)
    assert read_rows(tmp_path / "hub", columns, rename) == ours
    with_null = [*theirs[:3], {"question": None, "cot": "r", "level": 0}]
    pq.write_table(pa.Table.from_pylist(with_null), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 3: field 'prompt': expected str, got null"):
        read_rows(tmp_path / "n.parquet", columns, rename)
    with pytest.raises(DataError, match=r"missing field 'answer'; columns present"):
        read_rows(tmp_path / "saved", {**columns, "answer": str}, rename)


def test_over_long_rows_are_dropped_and_counted_never_truncated(tmp_path, tokenizer_dir, tokenizer):
    rows = [chat_row(i) for i in range(12)]
    lengths = [len(encode_chat(tokenizer, r["prompt"], r["response"])[0]) for r in rows]
    max_length = sorted(lengths)[8]
    data = ChatDataModule(write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "v.jsonl", rows),
                          str(tokenizer_dir), max_length=max_length, batch_size=5)
    data.setup("fit")
    too_long = sum(n > max_length for n in lengths)
    assert too_long > 0
    assert data.stats["train"] == {"rows": 12, "bad_format": 0, "too_long": too_long, "kept": 12 - too_long,
                                   "bad_rows": 0, "tokens": sum(n for n in lengths if n <= max_length),
                                   "max_tokens": max_length}
    kept = sorted(int(m.sum()) for b in data.val_dataloader() for m in b["attention_mask"])
    assert kept == sorted(n for n in lengths if n <= max_length)  # whole rows only


def test_cold_start_rejects_and_counts_bad_format(tmp_path, tokenizer_dir):
    good = [chat_row(i) for i in range(6)]
    bad = [chat_row(6, "The answer is 3."),
           chat_row(7, "<reasoning_process>x</reasoning_process>"),
           chat_row(8, cold_start_response("x", "y") + " trailing"),
           chat_row(9, cold_start_response("<think>x</think>", "y"))]
    data = ColdStartDataModule(write_jsonl(tmp_path / "t.jsonl", good + bad), None, str(tokenizer_dir), batch_size=4)
    data.setup("fit")
    assert (data.stats["train"]["bad_format"], data.stats["train"]["kept"]) == (4, 6)
    only_bad = write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(DataError, match="no usable rows"):
        ColdStartDataModule(only_bad, None, str(tokenizer_dir)).setup("fit")


def test_text_blocks_have_fixed_length_and_labels_equal_inputs(tmp_path, tokenizer_dir, tokenizer):
    docs = [{"id": str(i), "text": f"{p} The answer is {i * 7}."} for i, p in enumerate(PROMPTS * 4)]
    data = TextDataModule(write_jsonl(tmp_path / "t.jsonl", docs), write_jsonl(tmp_path / "v.jsonl", docs[:8]),
                          str(tokenizer_dir), block_size=16, batch_size=3)
    data.setup("fit")
    ids = [tokenizer(d["text"], add_special_tokens=False).input_ids for d in docs]
    stream = [t for doc in ids for t in doc + [tokenizer.bos_token_id]]
    n_blocks = len(stream) // 16
    assert data.stats["train"] == {"docs": len(docs), "bad_rows": 0, "tokens": len(stream), "blocks": n_blocks,
                                   "dropped_tokens": len(stream) - 16 * n_blocks}
    batches = list(data.train_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == n_blocks
    for b in batches:
        assert b["input_ids"].shape[1] == 16 and torch.equal(b["labels"], b["input_ids"])
        assert b["attention_mask"].all() and b["input_ids"].dtype == torch.long
    ordered = torch.cat([b["input_ids"] for b in data.val_dataloader()]).flatten().tolist()
    assert ordered == stream[: len(ordered)] and ordered.count(tokenizer.bos_token_id) >= 1


def test_bucketing_covers_every_index_once_and_cuts_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (1000,), generator=gen).tolist()
    sampler = torch.utils.data.RandomSampler(range(1000), generator=torch.Generator().manual_seed(1))
    batches = BucketBatchSampler(sampler, 16, lengths=lengths, seed=1)
    epochs = [list(batches), list(batches)]
    for epoch in epochs:
        assert sorted(i for b in epoch for i in b) == list(range(1000)) and len(epoch) == len(batches) == 63
    assert epochs[0] != epochs[1]
    order = torch.randperm(1000, generator=gen).tolist()
    random_batches = [order[i:i + 16] for i in range(0, 1000, 16)]
    bucketed, plain = padding_fraction(epochs[0], lengths), padding_fraction(random_batches, lengths)
    assert bucketed < 0.1 < 0.3 < plain, (bucketed, plain)
    assert bucket_batches(list(range(10)), [1] * 10, 4, generator=None) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("name", ["cold_start", "general", "pretrain"])
def test_data_configs_instantiate_and_load(tmp_path, tokenizer_dir, name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    world = tmp_path / "world"
    for folder in ("cold_start", "general_sft"):
        (world / folder).mkdir(parents=True)
        for split in ("train", "val"):
            write_jsonl(world / folder / f"{split}.jsonl", [chat_row(i) for i in range(5)])
    (world / "pretrain").mkdir()
    for split in ("train", "val"):
        docs = [{"id": str(i), "text": p * 30} for i, p in enumerate(PROMPTS)]
        write_jsonl(world / "pretrain" / f"{split}.jsonl", docs)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):   # the group file with its shared keys
        data = compose("train", overrides=[f"data={name}"]).data
    cfg = OmegaConf.merge({"paths": {"world_dir": str(world)}, "model": {"path": str(tokenizer_dir)}, "seed": 0},
                          {"data": data})
    data = instantiate(cfg.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert set(data.stats) == {"train", "val"}


def test_prompts_keep_only_the_rows_where_selects(tmp_path):
    from data_modules import PromptDataModule

    rows = [{"prompt": f"q{i}", "answer": i, "task": ["arithmetic", "countdown"][i % 2], "numbers": [i]} for i in range(6)]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    data = PromptDataModule(str(path), str(path), batch_size=2, where={"task": ["arithmetic"]})
    data.setup("fit")
    assert [r["prompt"] for r in data.rows["train"]] == ["q0", "q2", "q4"] and data.rows["train"][1]["answer"] == "2"
    batch = next(iter(data.val_dataloader()))
    assert batch["task"] == ["arithmetic"] * 3
    with pytest.raises(DataError, match="no row matches"):
        PromptDataModule(str(path), where={"task": ["sorting"]}).setup("fit")


def test_non_finite_numbers_are_refused_with_file_line_and_field(tmp_path):
    """JSON's NaN and Infinity are not data: refused where they stand, and skipped and counted with on_error=skip."""
    from r1lab.data.io import DataError, read_rows

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": 2}\n{"prompt": "0/0?", "answer": NaN}\n'
                    '{"prompt": "2+2?", "answer": 4, "numbers": [1, Infinity]}\n')
    columns = {"prompt": str, "answer": (str, int, float)}
    with pytest.raises(DataError, match=rf"{path}:2: field 'answer': non-finite number \(nan\)"):
        read_rows(path, columns)
    skipped: list[str] = []
    rows = read_rows(path, columns, on_error="skip", skipped=skipped)
    assert [r["prompt"] for r in rows] == ["1+1?"]
    assert len(skipped) == 2 and "field 'numbers': non-finite number" in skipped[1]


def test_the_cold_start_layout_allows_newlines_around_its_tags_and_nothing_outside_them():
    from r1lab.maths.rewards import cold_start_format_reward

    real = "<reasoning_process>\nFirst, 2 + 3 = 5.\n</reasoning_process>\n\n<summary>\nThe answer is \\boxed{5}.\n</summary>\n"
    hacks = ["<reasoning_process></reasoning_process>\n<summary>5</summary>",            # empty chain of thought
             "<reasoning_process>a</reasoning_process>\n<summary>5</summary> P.S. 6",    # text outside the tags
             "<reasoning_process>a</reasoning_process><summary>5</summary><summary>6</summary>",   # repeated tag
             "<reasoning_process>a</reasoning_process>\n5"]                               # missing tag
    assert cold_start_format_reward([real] + hacks) == [1.0, 0.0, 0.0, 0.0, 0.0]
