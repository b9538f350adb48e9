"""Reading rows of training and evaluation data, the one path every DataModule and evaluator loads through.

`read_rows(source, columns)` accepts a `.jsonl` or `.parquet` file, a directory of such files, a directory written by
`datasets.save_to_disk`, or a local `datasets.load_dataset` path or cached hub name (never downloaded), renames the
user's columns to ours and checks each row. A bad row stops the run with a `DataError` naming file, line (jsonl,
1-based) or row index (parquet and datasets, 0-based as in `dataset[i]`) and field:

    rows = read_rows("world/cold_start/train.jsonl", {"prompt": str, "response": str}, nonempty=("prompt", "response"))

Simplifications: everything is read into memory as a list of dicts (fine up to a few million rows); only the
top-level type of a field is checked (a list's elements are not); extra columns are kept untouched.
"""

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".jsonl", ".parquet")
TypeSpec = type | tuple[type, ...]


class DataError(ValueError):
    """A data file that cannot be used as is; the message names file, line or row, and field."""


def _type_name(spec: TypeSpec) -> str:
    """Readable name of an expected type for error messages.

    >>> _type_name((int, float))
    'int or float'
    """
    types = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(t.__name__ for t in types)


def _value_type(value: Any) -> str:
    """JSON-style name of a value's type for error messages.

    >>> _value_type(None), _value_type([1]), _value_type("a")
    ('null', 'list', 'str')
    """
    return "null" if value is None else type(value).__name__


def _type_ok(value: Any, spec: TypeSpec) -> bool:
    """Top-level type check; a bool is not accepted as an int, an int is accepted as a float.

    >>> _type_ok(True, int), _type_ok(3, float), _type_ok("3", (int, str))
    (False, True, True)
    """
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types) or (float in types and isinstance(value, int))


def check_row(row: Any, columns: Mapping[str, TypeSpec], rename: Mapping[str, str], nonempty: Iterable[str],
              where: str) -> dict:
    """Rename the user's columns to ours and validate one row; `where` is `file:line` or `file: row i` for errors.

    >>> check_row({"question": "1+1?", "id": 7}, {"prompt": str}, {"question": "prompt"}, ("prompt",), "f.jsonl:1")
    {'id': 7, 'prompt': '1+1?'}
    >>> check_row({"prompt": 3}, {"prompt": str}, {}, (), "f.jsonl:2")
    Traceback (most recent call last):
    ...
    r1lab.dataio.DataError: f.jsonl:2: field 'prompt': expected str, got int
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {_value_type(row)}")
    row = dict(row)
    for theirs, ours in rename.items():
        if theirs not in row:
            raise DataError(f"{where}: missing field '{theirs}' (mapped to '{ours}'); fields present: {sorted(row)}")
        if ours in row and ours != theirs:
            raise DataError(f"{where}: both '{theirs}' and '{ours}' present; renaming '{theirs}' would overwrite it")
        row[ours] = row.pop(theirs)
    for name, spec in columns.items():
        if name not in row:
            raise DataError(f"{where}: missing field '{name}'; fields present: {sorted(row)}")
        if not _type_ok(row[name], spec):
            raise DataError(f"{where}: field '{name}': expected {_type_name(spec)}, got {_value_type(row[name])}")
    for name in nonempty:
        if isinstance(row.get(name), str) and not row[name].strip():
            raise DataError(f"{where}: field '{name}' is empty")
    return row


def _parse_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    """(1-based line number, parsed JSON value) for each non-blank line; DataError on bad bytes or JSON."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.start + 4]
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start} of the line: {bad!r})") from None
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                reason = f"{e.msg} at column {e.colno}; truncated line?"
                raise DataError(f"{path}:{lineno}: invalid JSON ({reason})") from None


def _read_jsonl(path: Path, columns, rename, nonempty) -> list[dict]:
    rows = [check_row(value, columns, rename, nonempty, f"{path}:{lineno}") for lineno, value in _parse_jsonl(path)]
    if not rows:
        raise DataError(f"{path}: file is empty (no JSON lines)")
    return rows


def _check_table(records: list[dict], names: list[str], columns, rename, nonempty, label: str) -> list[dict]:
    """Validate rows of a columnar source (parquet or `datasets`), reporting a missing column once, not per row."""
    if not records:
        raise DataError(f"{label}: no rows")
    for theirs, ours in rename.items():
        if theirs not in names:
            raise DataError(f"{label}: missing field '{theirs}' (mapped to '{ours}'); columns present: {names}")
    renamed = {rename.get(n, n) for n in names}
    for name in columns:
        if name not in renamed:
            raise DataError(f"{label}: missing field '{name}'; columns present: {names}")
    return [check_row(r, columns, rename, nonempty, f"{label}: row {i}") for i, r in enumerate(records)]


def _read_parquet(path: Path, columns, rename, nonempty) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files; name the file either way
        raise DataError(f"{path}: cannot read as parquet ({e})") from None
    return _check_table(table.to_pylist(), table.column_names, columns, rename, nonempty, str(path))


@contextmanager
def _offline():
    """Force Hugging Face offline mode for one call, whatever the environment says: data is never downloaded."""
    import datasets
    import huggingface_hub

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _read_datasets(source: str, split: str, columns, rename, nonempty) -> list[dict]:
    """A `save_to_disk` directory, or a local/cached `load_dataset` source; never downloads."""
    import datasets

    path = Path(source)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
    else:
        try:
            with _offline():
                loaded = datasets.load_dataset(source, download_config=datasets.DownloadConfig(local_files_only=True))
        except FileNotFoundError:
            raise
        except Exception as e:  # load_dataset raises many types; a missing local dataset must read as not found
            if path.exists():
                raise DataError(f"{source}: datasets.load_dataset failed ({type(e).__name__}: {e})") from None
            raise FileNotFoundError(f"{source}: no such file or directory, and not a dataset in the local Hugging "
                                    f"Face cache (nothing is downloaded): {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{source}: no split '{split}'; splits present: {sorted(loaded)}")
        loaded, label = loaded[split], f"{source} [{split}]"
    else:
        label = source
    return _check_table(loaded.to_list(), list(loaded.column_names), columns, rename, nonempty, label)


def _is_datasets_dir(path: Path) -> bool:
    """A `save_to_disk` directory, or a hub-style layout for `load_dataset` (data files in subfolders, e.g. data/)."""
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return True
    suffixes = DATA_SUFFIXES + (".json", ".csv", ".arrow")
    return any(p.suffix in suffixes and p.parent != path for p in path.rglob("*") if p.is_file())


def looks_like_hub_name(source: str) -> bool:
    """A `name` or `owner/name` that `load_dataset` may find in the local cache (not a path, not a data file).

    >>> looks_like_hub_name("openai/gsm8k"), looks_like_hub_name("gsm8k")
    (True, True)
    >>> looks_like_hub_name("./world/train.jsonl"), looks_like_hub_name("/data/x"), looks_like_hub_name("a/b/c")
    (False, False, False)
    """
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", source) is not None
    return hub_id and not source.endswith(DATA_SUFFIXES)


def _read_one(source: str | os.PathLike, columns, rename, nonempty, split: str) -> list[dict]:
    path = Path(source)
    if path.is_file():
        if path.suffix == ".jsonl":
            return _read_jsonl(path, columns, rename, nonempty)
        if path.suffix == ".parquet":
            return _read_parquet(path, columns, rename, nonempty)
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (expected .jsonl or .parquet)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if files:
            return [row for f in files for row in _read_one(f, columns, rename, nonempty, split)]
        if not _is_datasets_dir(path):
            raise DataError(f"{path}: directory has no .jsonl or .parquet files and is not a `datasets` directory")
        return _read_datasets(str(path), split, columns, rename, nonempty)
    if path.suffix in DATA_SUFFIXES or not looks_like_hub_name(str(source)):
        raise FileNotFoundError(f"{source}: no such file or directory")
    return _read_datasets(str(source), split, columns, rename, nonempty)


def read_rows(source: str | os.PathLike | Sequence[str | os.PathLike], columns: Mapping[str, TypeSpec],
              rename: Mapping[str, str] | None = None, split: str = "train",
              nonempty: Iterable[str] = ()) -> list[dict]:
    """All rows of `source` (one source or a list of them, concatenated in order) as dicts with our column names.

    columns:  required fields and their types, e.g. {"prompt": str, "answer": str, "numbers": list}
    rename:   the user's column -> ours, e.g. {"question": "prompt"}, applied before checking
    split:    the split to take from a `datasets` DatasetDict
    nonempty: string fields that must not be blank
    """
    if isinstance(source, (str, os.PathLike)):
        sources = [source]
    else:
        sources = list(source)
        if not sources:
            raise DataError("read_rows: empty list of sources")
    rename, nonempty = dict(rename or {}), tuple(nonempty)
    return [row for s in sources for row in _read_one(s, columns, rename, nonempty, split)]


def select_rows(rows: list[dict], where: Mapping[str, Sequence] | None) -> list[dict]:
    """The rows whose every `where` column holds one of the listed values (e.g. {"task": ["arithmetic"]}).

    >>> select_rows([{"task": "a", "level": 1}, {"task": "b", "level": 1}, {"task": "a", "level": 2}],
    ...             {"task": ["a"], "level": [1]})
    [{'task': 'a', 'level': 1}]
    """
    if not where:
        return rows
    kept = [row for row in rows if all(row.get(col) in set(values) for col, values in where.items())]
    if not kept:
        raise DataError(f"select_rows: no row matches {dict(where)} (of {len(rows)} rows); set `where: null` to keep all")
    return kept
