"""Put several evaluations side by side: `python -m r1lab.report pretrain=<eval dir> cold_start=<eval dir> [--out FILE]`.

Each argument names a row and points at an `r1lab.eval` output directory (or its metrics.json). Prints one markdown
table and, with --out, writes it to a file; an evaluation with judges (`eval_set=all_scenarios`) adds the general
prompts' helpfulness, unsafe and leak columns.
"""

import argparse
from pathlib import Path

from r1lab.infra.report import comparison


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
