"""Hostile inputs: every DataModule and the sampling job fed broken data.

    pytest tests/test_hostile.py

Each fault must stop the run with a DataError naming the file, the line (jsonl, 1-based) and the field, or, with
`on_error=skip`, drop the bad row and count it; over-long rows are dropped and counted, never truncated. Faults of a
whole file (empty, a directory without data, a parquet file without a column) always stop the run. That the sampling
job checks its prompts before it loads a model is tests/test_sample.py's test_malformed_prompt_row_fails_before_sampling.
"""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omegaconf import OmegaConf

from data_modules import (
    GeneralDataModule,
    PreferenceDataModule,
    PromptDataModule,
    RejectionSampledDataModule,
    TextDataModule,
)
from r1lab.data.io import DataError
from r1lab.maths.formats import cold_start_response
from r1lab.sample import read_prompts

N = 6  # good rows per file; the faults below break line 2 (or, for duplicates, line 3)


def _chat(i: int) -> dict:
    return {"id": f"c{i}", "prompt": f"What is {i} + 1?", "response": f"It is {i + 1}."}


def _prompt(i: int) -> dict:
    return {"id": f"p{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1), "task": "arithmetic"}


def _pair(i: int) -> dict:
    return {"id": f"h{i}", "prompt": f"What is {i} + 1?", "chosen": f"It is {i + 1}.", "rejected": "No idea."}


def _sampled(i: int) -> dict:
    return {"id": f"rs-{i}", "prompt": f"What is {i} + 1?",
            "response": cold_start_response(f"{i} + 1 = {i + 1}.", f"\\boxed{{{i + 1}}}")}


def _text(i: int) -> dict:
    return {"id": f"t{i}", "text": f"Document {i}: the sum of {i} and 1 is {i + 1}. " * 4}


def _sample_job(path: Path, tok: Path, **kw):
    data = {"files": str(path), "rename": None, "split": "train", "where": None} | kw
    cfg = OmegaConf.create({"data": data, "limit": None, "seed": 0, "model_dir": str(tok)})
    return len(read_prompts(cfg)), None  # the job prints its counts; the rows left tell them here


def _setup(module, split: str = "train"):
    module.setup("fit")
    stats = module.stats[split]
    return stats.get("kept", stats.get("docs")), stats


def _rejection(path: Path, tok: Path, **kw):
    """The shard `path` of a finished sampling run: manifest.json beside it lists it with its number of lines."""
    lines = len(path.read_bytes().splitlines())
    manifest = {"rows": lines, "counts": {}, "shards": [{"file": path.name, "prompts": lines, "rows": lines}]}
    (path.parent / "manifest.json").write_text(json.dumps(manifest))
    general = path.parent.parent / "general.jsonl"
    general.write_text("".join(json.dumps(_chat(i)) + "\n" for i in range(4)))
    return _setup(RejectionSampledDataModule(str(path.parent), str(general), str(tok), batch_size=2, **kw))


# kind -> (good row, its field that must not be empty, loader(path, tokenizer_dir, **kwargs) -> (rows kept, stats))
KINDS = {
    "chat": (_chat, "response", lambda p, tok, **kw: _setup(GeneralDataModule(str(p), None, str(tok), 256, 2, **kw))),
    "prompts": (_prompt, "answer", lambda p, tok, **kw: _setup(PromptDataModule(str(p), None, batch_size=1, **kw))),
    "preferences": (_pair, "chosen",
                    lambda p, tok, **kw: _setup(PreferenceDataModule(str(p), None, str(tok), 256, 2, **kw))),
    "text": (_text, "text", lambda p, tok, **kw: _setup(TextDataModule(str(p), None, str(tok), 16, 2, **kw))),
    "rejection": (_sampled, "response", _rejection),
    "sample": (_prompt, "answer", _sample_job),
}


def _lines(make) -> list[bytes]:
    return [json.dumps(make(i)).encode() for i in range(N)]


def _with_row(make, line: int, change) -> list[bytes]:
    lines = _lines(make)
    row = make(line - 1)
    change(row)
    lines[line - 1] = json.dumps(row).encode()
    return lines


def _first_field(make) -> str:
    return "text" if "text" in make(0) else "prompt"


# fault -> (lines of the file given (kind's row maker, its non-empty field), the line and the text the error names)
ROW_FAULTS = {
    "truncated_json": (lambda make, field: _lines(make)[:1] + [_lines(make)[1][:15]] + _lines(make)[2:],
                       2, "invalid JSON"),
    "non_utf8": (lambda make, field: _lines(make)[:1] + [_lines(make)[1][:10] + b"\xff\xfe" + _lines(make)[1][10:]]
                 + _lines(make)[2:], 2, "not valid UTF-8"),
    "missing_field": (lambda make, field: _with_row(make, 2, lambda r: r.pop(_first_field(make))),
                      2, "missing field '{first}'"),
    "wrong_type": (lambda make, field: _with_row(make, 2, lambda r: r.update({_first_field(make): 123})),
                   2, "field '{first}': expected str, got int"),
    "empty_prompt": (lambda make, field: _with_row(make, 2, lambda r: r.update({_first_field(make): "  "})),
                     2, "field '{first}' is empty"),
    "empty_answer": (lambda make, field: _with_row(make, 2, lambda r: r.update({field: ""})),
                     2, "field '{field}' is empty"),
    "not_an_object": (lambda make, field: _lines(make)[:1] + [b'["a", "list"]'] + _lines(make)[2:],
                      2, "expected a JSON object, got list"),
    "duplicate_id": (lambda make, field: _with_row(make, 3, lambda r: r.update({"id": make(0)["id"]})),
                     3, "field 'id': duplicate id"),
}


@pytest.mark.parametrize("fault", ROW_FAULTS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_row_names_file_line_and_field(kind, fault, tmp_path, tokenizer_dir):
    make, field, load = KINDS[kind]
    lines, line, expected = ROW_FAULTS[fault]
    path = tmp_path / "data" / "shard-00000.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join(lines(make, field)) + b"\n")
    with pytest.raises(DataError) as err:
        load(path, tokenizer_dir)
    message = str(err.value)
    assert f"{path}:{line}: " in message, message
    assert expected.format(first=_first_field(make), field=field) in message, message


@pytest.mark.parametrize("fault", ["truncated_json", "non_utf8", "wrong_type", "empty_answer", "duplicate_id"])
@pytest.mark.parametrize("kind", KINDS)
def test_on_error_skip_drops_and_counts_the_bad_row(kind, fault, tmp_path, tokenizer_dir, caplog):
    make, field, load = KINDS[kind]
    path = tmp_path / "data" / "shard-00000.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join(ROW_FAULTS[fault][0](make, field)) + b"\n")
    kept, stats = load(path, tokenizer_dir, on_error="skip")
    if kind == "text":  # documents, not rows, reach the packer
        assert stats["docs"] == N - 1 and stats["bad_rows"] == 1
    elif stats is not None:
        assert kept == N - 1 and stats["bad_rows"] == 1, stats
    else:
        assert kept == N - 1
    assert "skipped 1 bad rows" in caplog.text


def _empty(tmp_path: Path, make) -> Path:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    return path


def _blank_lines(tmp_path: Path, make) -> Path:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n  \n\n")
    return path


def _no_data_dir(tmp_path: Path, make) -> Path:
    path = tmp_path / "not_a_file"
    path.mkdir()
    (path / "README.txt").write_text("the data was meant to be here")
    return path


def _parquet_missing_column(tmp_path: Path, make) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    rows = [make(i) for i in range(N)]
    first = _first_field(make)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != first} for r in rows]), path)
    return path


def _parquet_bad_row(tmp_path: Path, make) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    rows = [make(i) for i in range(N)]
    rows[4][_first_field(make)] = " "
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


FILE_FAULTS = {  # fault -> (writer(tmp_path, row maker) -> path given, text the error names after the path)
    "empty_file": (_empty, "file is empty"),
    "blank_lines_only": (_blank_lines, "file is empty"),
    "directory_without_data": (_no_data_dir, "directory has no .jsonl or .parquet files"),
    "parquet_missing_column": (_parquet_missing_column, "missing field '{first}'; columns present"),
    "parquet_empty_field": (_parquet_bad_row, ": row 4: field '{first}' is empty"),
}


@pytest.mark.parametrize("fault", FILE_FAULTS)
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "rejection"])  # its shards come from its manifest
def test_a_bad_file_names_the_file(kind, fault, tmp_path, tokenizer_dir):
    make, _, load = KINDS[kind]
    write, expected = FILE_FAULTS[fault]
    path = write(tmp_path, make)
    with pytest.raises(DataError) as err:  # a broken file is never skipped; a bad parquet row is when asked to
        load(path, tokenizer_dir, **({} if fault == "parquet_empty_field" else {"on_error": "skip"}))
    assert str(err.value).startswith(str(path)), err.value
    assert expected.format(first=_first_field(make)) in str(err.value), err.value


def test_a_missing_file_is_not_found(tmp_path, tokenizer_dir):
    for kind, (_, _, load) in KINDS.items():
        if kind != "rejection":
            with pytest.raises(FileNotFoundError, match="no such file or directory"):
                load(tmp_path / "typo.jsonl", tokenizer_dir)
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        RejectionSampledDataModule(str(tmp_path), str(tmp_path / "g.jsonl"), str(tokenizer_dir)).setup("fit")


def test_every_row_bad_is_an_error_even_when_skipping(tmp_path, tokenizer_dir):
    path = tmp_path / "all_bad.jsonl"
    path.write_bytes(b'{"prompt": \n{"prompt": 3, "answer": "1"}\n')
    with pytest.raises(DataError, match="no usable rows .2 bad rows skipped"):
        PromptDataModule(str(path), on_error="skip", batch_size=1).setup("fit")


def _long(make, field: str) -> list[bytes]:
    rows = [make(i) for i in range(N)]
    rows[2][field] = "What is the sum of all of these numbers? " + " + ".join(map(str, range(200)))
    return [json.dumps(r).encode() for r in rows]


@pytest.mark.parametrize("kind,kwargs", [
    ("chat", {"max_length": 48}), ("preferences", {"max_length": 48}),
    ("prompts", {"max_prompt_length": 48}), ("sample", {"max_prompt_length": 48}),
])
def test_an_over_long_prompt_is_dropped_and_counted(kind, kwargs, tmp_path, tokenizer_dir, capsys):
    make, _, load = KINDS[kind]
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"\n".join(_long(make, "prompt")) + b"\n")
    if kind == "prompts":
        kwargs = kwargs | {"tokenizer_path": str(tokenizer_dir)}
    if kind in ("chat", "preferences"):  # positional max_length in the KINDS loaders: build them here
        module = {"chat": GeneralDataModule, "preferences": PreferenceDataModule}[kind]
        kept, stats = _setup(module(str(path), None, str(tokenizer_dir), batch_size=2, **kwargs))
    else:
        kept, stats = load(path, tokenizer_dir, **kwargs)
    assert kept == N - 1
    if stats is not None:
        assert stats["too_long"] == 1, stats
    else:
        assert "1 longer than 48 tokens" in capsys.readouterr().out


def test_fewer_prompts_than_one_batch_is_an_error(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps(_prompt(i)) + "\n" for i in range(3)))
    with pytest.raises(DataError, match="3 training prompts, fewer than one batch .batch_size=16"):
        PromptDataModule(str(path), batch_size=16).setup("fit")


def test_general_prompts_may_have_no_answer_and_countdown_needs_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [_prompt(0), {"prompt": "Tell me the vault code.", "answer": "", "kind": "general"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PromptDataModule(str(path), batch_size=1)
    data.setup("fit")
    assert [r["answer"] for r in data.rows["train"]] == ["1", ""]
    rows.append({"prompt": "Make 7 from 3 and 4.", "answer": "7", "task": "countdown"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"p.jsonl:3: field 'numbers': task 'countdown' needs a list"):
        PromptDataModule(str(path), batch_size=1).setup("fit")
