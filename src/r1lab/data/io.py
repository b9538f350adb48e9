"""Reading rows of training and evaluation data, the one path every DataModule and evaluator loads through.

`read_rows(source, columns)` accepts a `.jsonl` or `.parquet` file, a directory of such files, a directory written by
`datasets.save_to_disk`, or a local `datasets.load_dataset` path or cached hub name (never downloaded), renames the
user's columns to ours, puts each row through an optional `row_format` (a preset's row function, e.g. a GSM8K row
to a prompt and its answer: data_modules/formats.py) and checks it. A bad row stops the run with a `DataError`
naming file, line (jsonl, 1-based) or row index (parquet and datasets, 0-based as in `dataset[i]`) and field:

    rows = read_rows("world/cold_start/train.jsonl", {"prompt": str, "response": str}, nonempty=("prompt", "response"))

Rows with an `id` must have distinct ids across all the sources of one call (a file listed twice, or two merged
shards, would otherwise train on duplicates silently). `on_error="skip"` drops bad rows instead of stopping (bad
bytes or JSON on a line, a missing, wrongly typed or empty field, a duplicated id), counts them and logs a warning;
problems with a whole file (missing, empty, a directory without data files, a missing parquet column) always stop.

Simplifications: everything is read into memory as a list of dicts (fine up to a few million rows); only the
top-level type of a field is checked (a list's elements are not); extra columns are kept untouched.
"""

import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".jsonl", ".parquet")
ON_ERROR = ("raise", "skip")
TypeSpec = type | tuple[type, ...]
log = logging.getLogger(__name__)


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


RowFormat = Callable[[dict], dict]  # a row in the user's layout -> a row in ours; raises DataError("field 'x': ...")


def check_row(row: Any, columns: Mapping[str, TypeSpec], rename: Mapping[str, str], nonempty: Iterable[str],
              where: str, row_format: RowFormat | None = None) -> dict:
    """Rename the user's columns to ours, apply `row_format`, and validate one row; `where` is `file:line` or
    `file: row i`, the prefix of every error (a DataError that `row_format` raises included).

    >>> check_row({"question": "1+1?", "id": 7}, {"prompt": str}, {"question": "prompt"}, ("prompt",), "f.jsonl:1")
    {'id': 7, 'prompt': '1+1?'}
    >>> check_row({"prompt": 3}, {"prompt": str}, {}, (), "f.jsonl:2")
    Traceback (most recent call last):
    ...
    r1lab.data.io.DataError: f.jsonl:2: field 'prompt': expected str, got int
    >>> check_row({"q": "two"}, {"prompt": str}, {}, (), "f.jsonl:3", lambda r: {"prompt": r["q"].upper()})
    {'prompt': 'TWO'}
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
    if row_format is not None:
        try:
            row = row_format(row)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    for name, spec in columns.items():
        if name not in row:
            raise DataError(f"{where}: missing field '{name}'; fields present: {sorted(row)}")
        if not _type_ok(row[name], spec):
            raise DataError(f"{where}: field '{name}': expected {_type_name(spec)}, got {_value_type(row[name])}")
    for name in nonempty:
        if isinstance(row.get(name), str) and not row[name].strip():
            raise DataError(f"{where}: field '{name}' is empty")
    for name, value in row.items():
        if _non_finite(value):
            raise DataError(f"{where}: field '{name}': non-finite number ({value!r}); JSON NaN and Infinity are not data")
    return row


def _non_finite(value: Any) -> bool:
    """A NaN or infinite float anywhere in a field's value (lists and objects included).

    >>> _non_finite(float("nan")), _non_finite([1, float("inf")]), _non_finite({"a": 1.5}), _non_finite("nan")
    (True, True, False, False)
    """
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(map(_non_finite, value))
    return isinstance(value, dict) and any(map(_non_finite, value.values()))


def _parse_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed JSON value or the DataError of that line) for each non-blank line (bad bytes or JSON)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.start + 4]
                yield where, DataError(f"{where}: not valid UTF-8 (byte {e.start} of the line: {bad!r})")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno}; "
                                      "truncated line?)")
            except RecursionError:
                yield where, DataError(f"{where}: invalid JSON (nested too deeply)")


class _Rows:
    """Checked rows of one `read_rows` call, the bad ones raised or skipped and counted, ids checked for duplicates."""

    def __init__(self, columns, rename, nonempty, on_error: str, row_check: Callable[[dict], str | None] | None,
                 row_format: RowFormat | None = None, locations: list[str] | None = None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.columns, self.rename, self.nonempty, self.on_error = columns, rename, nonempty, on_error
        self.row_check, self.row_format, self.locations = row_check, row_format, locations
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.ids: dict[Any, str] = {}

    def add(self, where: str, value: Any) -> None:
        try:
            if isinstance(value, DataError):
                raise value
            row = check_row(value, self.columns, self.rename, self.nonempty, where, self.row_format)
            problem = self.row_check(row) if self.row_check is not None else None
            if problem:
                raise DataError(f"{where}: {problem}")
            self._check_id(row, where)
        except DataError as e:
            if self.on_error == "raise":
                raise e from None
            self.skipped.append(str(e))
            return
        self.rows.append(row)
        if self.locations is not None:
            self.locations.append(where)

    def _check_id(self, row: dict, where: str) -> None:
        if row.get("id") is None:
            return
        key = row["id"] if isinstance(row["id"], (str, int, float)) else repr(row["id"])
        if key in self.ids:
            raise DataError(f"{where}: field 'id': duplicate id {row['id']!r} (first at {self.ids[key]}); ids must be "
                            "unique: is a file listed twice? (on_error=skip drops the repeats)")
        self.ids[key] = where


def _read_jsonl(path: Path, out: _Rows) -> None:
    lines = 0
    for where, value in _parse_jsonl(path):
        lines += 1
        out.add(where, value)
    if not lines:
        raise DataError(f"{path}: file is empty (no JSON lines)")


def _check_table(records: list[dict], names: list[str], out: _Rows, label: str) -> None:
    """Validate rows of a columnar source (parquet or `datasets`), reporting a missing column once, not per row
    (with a `row_format`, our columns come out of it: a missing one is reported per row)."""
    if not records:
        raise DataError(f"{label}: no rows")
    for theirs, ours in out.rename.items():
        if theirs not in names:
            raise DataError(f"{label}: missing field '{theirs}' (mapped to '{ours}'); columns present: {names}")
    renamed = {out.rename.get(n, n) for n in names}
    for name in out.columns if out.row_format is None else ():
        if name not in renamed:
            raise DataError(f"{label}: missing field '{name}'; columns present: {names}")
    for i, r in enumerate(records):
        out.add(f"{label}: row {i}", r)


def _read_parquet(path: Path, out: _Rows) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files; name the file either way
        raise DataError(f"{path}: cannot read as parquet ({e})") from None
    _check_table(table.to_pylist(), table.column_names, out, str(path))


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


def _read_datasets(source: str, split: str, out: _Rows) -> None:
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
    _check_table(loaded.to_list(), list(loaded.column_names), out, label)


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


def _read_one(source: str | os.PathLike, split: str, out: _Rows) -> None:
    path = Path(source)
    if path.is_file():
        if path.suffix == ".jsonl":
            return _read_jsonl(path, out)
        if path.suffix == ".parquet":
            return _read_parquet(path, out)
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (expected .jsonl or .parquet)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if files:
            for f in files:
                _read_one(f, split, out)
            return None
        if not _is_datasets_dir(path):
            raise DataError(f"{path}: directory has no .jsonl or .parquet files and is not a `datasets` directory")
        return _read_datasets(str(path), split, out)
    if path.suffix in DATA_SUFFIXES or not looks_like_hub_name(str(source)):
        raise FileNotFoundError(f"{source}: no such file or directory")
    return _read_datasets(str(source), split, out)


def read_rows(source: str | os.PathLike | Sequence[str | os.PathLike], columns: Mapping[str, TypeSpec],
              rename: Mapping[str, str] | None = None, split: str = "train",
              nonempty: Iterable[str] = (), on_error: str = "raise", skipped: list[str] | None = None,
              row_check: Callable[[dict], str | None] | None = None, row_format: RowFormat | None = None,
              locations: list[str] | None = None) -> list[dict]:
    """All rows of `source` (one source or a list of them, concatenated in order) as dicts with our column names.

    columns:  required fields and their types, e.g. {"prompt": str, "answer": str, "numbers": list}
    rename:   the user's column -> ours, e.g. {"question": "prompt"}, applied before checking
    row_format: row (renamed) -> row in our layout, applied before checking (data_modules/formats.py); a DataError
              it raises ("field 'solution': no \\boxed{}") makes a bad row
    split:    the split to take from a `datasets` DatasetDict
    nonempty: string fields that must not be blank
    on_error: "raise" stops at the first bad row; "skip" drops bad rows, logs how many, and appends the error
              message of each to `skipped` (when given)
    row_check: row (renamed, checked) -> what is wrong with it ("field 'x': ...") or None; a bad row like any other
    locations: when given, gets the `file:line` or `file: row i` of each returned row, in order
    """
    if isinstance(source, (str, os.PathLike)):
        sources = [source]
    else:
        sources = list(source)
        if not sources:
            raise DataError("read_rows: empty list of sources")
    out = _Rows(columns, dict(rename or {}), tuple(nonempty), on_error, row_check, row_format, locations)
    for s in sources:
        _read_one(s, split, out)
    if skipped is not None:
        skipped.extend(out.skipped)
    if out.skipped:
        log.warning("%s: skipped %d bad rows (on_error=skip), kept %d; first: %s", source, len(out.skipped),
                    len(out.rows), out.skipped[0])
    if not out.rows:
        raise DataError(f"{source}: no usable rows ({len(out.skipped)} bad rows skipped; first: {out.skipped[0]})")
    return out.rows


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


COLUMNS = {"prompt": str, "answer": (str, int, float)}  # optional: task, numbers (countdown), id, kind, secret


def spread(rows: list, limit: int | None, seed: int = 0) -> list:
    """`limit` rows drawn without replacement by a fixed seed, kept in file order; all if limit is None.

    A random draw, not a stride: files that cycle through tasks would alias with a stride (every 2.5th row of a
    5-task cycle only ever hits two of the tasks).

    >>> rows = [f"t{i % 5}" for i in range(500)]
    >>> sorted(set(spread(rows, 200))), spread([1, 2], None), spread([1, 2], 5), spread(rows, 3) == spread(rows, 3)
    (['t0', 't1', 't2', 't3', 't4'], [1, 2], [1, 2], True)
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]


def collate_columns(rows: list[dict]) -> dict[str, list]:
    """Rows -> columns (missing values become None, so every column has one entry per row).

    >>> collate_columns([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2", "task": "t"}])
    {'prompt': ['a', 'b'], 'answer': ['1', '2'], 'task': [None, 't']}
    """
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}
