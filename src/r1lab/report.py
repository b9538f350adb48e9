"""Put several evaluations side by side: `python -m r1lab.report base=<eval dir> cold_start=<eval dir> [--out FILE]`.

Each argument names a row and points at an `r1lab.eval` output directory (or its metrics.json). Prints one markdown
table and, with --out, writes it to a file.
"""

import argparse
import json
from pathlib import Path

from r1lab.eval import metrics_table

COLUMNS = ("pass@1", "format", "lang_mix", "length", "answered", "truncated", "prompts")


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (run `python -m r1lab.eval ... output_dir=...` first)")
    return json.loads(path.read_text())["metrics"]


def comparison(named: dict[str, str | Path]) -> str:
    """The table: headline metrics first (cons@k wherever it sits), the per-task pass@1 after them."""
    rows = {name: load_metrics(path) for name, path in named.items()}
    ordered = {}
    for name, metrics in rows.items():
        head = [c for c in COLUMNS[:1] if c in metrics] + [c for c in metrics if c.startswith("cons@")]
        head += [c for c in COLUMNS[1:] if c in metrics]
        ordered[name] = {c: metrics[c] for c in head + sorted(c for c in metrics if c.startswith("pass@1/"))}
    return metrics_table(ordered)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=DIR", help="a row name and an evaluation directory")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    named = dict(run.split("=", 1) for run in args.runs)
    table = comparison(named)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
