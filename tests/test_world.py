"""Tests of the demo world (r1lab.demo.world): determinism, disjoint splits, correct answers, formats, languages."""

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from r1lab.demo.world import Step, completion_answer, render_solution, write_world
from r1lab.maths import formats

SMALL = dict(n_reasoning_train=600, n_reasoning_val=40, n_reasoning_test=80, n_general_train=250, n_general_val=50,
             n_general_test=100, n_facts=70, n_cold_start=250, n_cold_start_val=20, n_pretrain_val=40)
HELD_OUT = ("reasoning/val", "reasoning/test", "general/val", "general/test", "cold_start/val", "general_sft/val")
TRAIN = ("reasoning/train", "general/train", "cold_start/train", "general_sft/train")
COLD_START = re.compile(
    r"<reasoning_process>([^<]+)</reasoning_process><summary>The answer is \\boxed\{([^}]+)\}\.</summary>")
CJK = re.compile(r"[\u4e00-\u9fff]")


def read(world: Path, name: str) -> list[dict]:
    with open(world / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=3, sizes=SMALL)
    return out


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    write_world(tmp_path / "a", seed=3, sizes=SMALL)
    write_world(tmp_path / "b", seed=4, sizes=SMALL)
    files = sorted(p.relative_to(world) for p in world.rglob("*.json*"))
    assert len(files) == 13
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (world / rel).read_bytes(), rel
    assert (tmp_path / "b" / "reasoning/test.jsonl").read_bytes() != (world / "reasoning/test.jsonl").read_bytes()


def test_manifest_counts_ids_and_schemas(world):
    manifest = json.loads((world / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and manifest["sizes"]["n_reasoning_train"] == 600
    for name, count in manifest["rows"].items():
        rows = read(world, name.removesuffix(".jsonl"))
        assert len(rows) == count, name
        assert len({r["id"] for r in rows}) == count, f"duplicate ids in {name}"
    keys = {"id", "kind", "task", "level", "prompt", "answer", "solution", "numbers"}
    for split in ("train", "val", "test"):
        assert all(set(r) == keys for r in read(world, f"reasoning/{split}") + read(world, f"general/{split}"))
        ids = [r["id"] for r in read(world, f"reasoning/{split}")]
        assert all(re.fullmatch(rf"(arithmetic|countdown)-{split}-\d{{6}}", i) for i in ids)
    chat_keys = {"id", "kind", "task", "prompt", "response", "answer", "numbers"}
    assert all(set(r) == chat_keys for r in read(world, "cold_start/train") + read(world, "general_sft/val"))
    assert all(set(r) == {"id", "text"} for r in read(world, "pretrain/val"))
    tasks = Counter((r["task"], r["level"]) for r in read(world, "reasoning/train"))
    assert tasks == {("arithmetic", 1): 150, ("arithmetic", 2): 150, ("arithmetic", 3): 150, ("countdown", 1): 75,
                     ("countdown", 2): 75}


def test_held_out_prompts_appear_in_no_train_file_nor_pretrain_text(world):
    train_prompts = {r["prompt"] for name in TRAIN for r in read(world, name)}
    pretrain = "\n".join(r["text"] for split in ("train", "val") for r in read(world, f"pretrain/{split}"))
    held_out = {r["prompt"] for name in HELD_OUT for r in read(world, name)}
    assert len(held_out) > 200
    assert not held_out & train_prompts
    assert not [p for p in held_out if p in pretrain]
    val, test = ({r["prompt"] for r in read(world, f"reasoning/{s}")} for s in ("val", "test"))
    assert not val & test
    assert any(r["prompt"] in pretrain for r in read(world, "reasoning/train"))


def test_facts_all_in_pretrain_and_split_between_train_and_test(world):
    pretrain = " ".join(r["text"] for r in read(world, "pretrain/train"))
    countries = {}
    for split in ("train", "val", "test"):
        lookups = [r for r in read(world, f"general/{split}") if r["task"] == "lookup"]
        countries[split] = {re.fullmatch(r"What is the capital of (\w+)\?", r["prompt"]).group(1) for r in lookups}
        for row in lookups:
            country = row["prompt"].removeprefix("What is the capital of ").removesuffix("?")
            assert f"The capital of {country} is {row['answer']}." in pretrain or \
                f"{row['answer']} is the capital of {country}." in pretrain or \
                f"{country} has its capital in {row['answer']}." in pretrain, row
    assert len(countries["test"]) == 20 and len(countries["val"]) == 10 and len(countries["train"]) == 40
    assert not countries["test"] & countries["train"] and not countries["val"] & countries["train"]


def check_reasoning(row: dict) -> None:
    """Recompute the answer of a reasoning row from its prompt and its English steps."""
    for a, op, b, r in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", row["solution"]):
        assert eval(f"{a} {op} {b}") == int(r), row  # noqa: S307 (digits and one operator only)
    if row["task"] == "arithmetic":
        expr = re.search(r"\d[\d +*-]*\d|\d", row["prompt"]).group()
        assert eval(expr) == int(row["answer"]) >= 0 and row["numbers"] == [], row  # noqa: S307
        operands = [int(n) for n in re.findall(r"\d+", expr)]
        if row["level"] is not None:  # a number (a product at level 3), then one-digit terms
            assert len(operands) == {1: 3, 2: 4, 3: 4}[row["level"]] and max(operands[1:]) <= 9, row
            assert ("*" in expr) == (row["level"] == 3), row
    else:
        expr = completion_answer(row)
        assert re.fullmatch(r"[\d +*()-]+", expr), row
        assert sorted(map(int, re.findall(r"\d+", expr))) == sorted(row["numbers"]), row
        assert eval(expr) == int(row["answer"]) and 1 <= int(row["answer"]) <= 100, row  # noqa: S307
        assert f"make {row['answer']}." in row["prompt"] and len(row["numbers"]) == row["level"] + 2


def test_every_answer_is_correct(world):
    for split in ("train", "val", "test"):
        for row in read(world, f"reasoning/{split}"):
            check_reasoning(row)
        for row in read(world, f"general/{split}"):
            quoted = re.findall(r"'([^']*)'", row["prompt"])
            expected = {
                "reverse": lambda: quoted[0][::-1], "upper": lambda: quoted[0].upper(),
                "count": lambda: str(quoted[1].count(quoted[0])),
                "sort": lambda: ", ".join(map(str, sorted(map(int, re.findall(r"\d+", row["prompt"]))))),
                "lookup": lambda: row["answer"],  # checked against the fact sentences above
            }[row["task"]]()
            assert row["answer"] == expected, row


def test_cold_start_rows_in_format_except_the_broken_fraction(world):
    manifest = json.loads((world / "manifest.json").read_text(encoding="utf-8"))
    train, val = read(world, "cold_start/train"), read(world, "cold_start/val")
    broken = [r for r in train if not COLD_START.fullmatch(r["response"])]
    assert len(broken) == manifest["cold_start_broken"] == 5
    assert all(COLD_START.fullmatch(r["response"]) for r in val)
    mixed = 0
    for row in train + val:
        if row not in broken:
            reasoning, boxed = COLD_START.fullmatch(row["response"]).groups()
            assert boxed == formats.extract_boxed(row["response"])
            assert reasoning.startswith("Let me work through this step by step.") and "Check:" in reasoning
            mixed += bool(CJK.search(reasoning))
            if CJK.search(reasoning):
                continue  # check_reasoning reads English steps
            level = len(row["numbers"]) - 2 if row["task"] == "countdown" else None  # chat rows carry no level
            check_reasoning({**row, "level": level, "solution": reasoning.split(" Check:")[0]})
    assert 0.1 < mixed / len(train + val) < 0.3  # cold_start_lang_mix: 80% English, the rest zh or per-step mixed
    val_prompts = {r["prompt"] for r in read(world, "reasoning/val")}
    assert all(r["prompt"] in val_prompts for r in val)


def test_general_sft_rows_answer_bare(world):
    rows = read(world, "general_sft/train")
    general = {r["prompt"]: r for r in read(world, "general/train")}
    assert len(rows) == len(general)
    assert all(r["response"] == r["answer"] == general[r["prompt"]]["answer"] for r in rows)


def test_pretrain_mixes_layouts_languages_and_sloppy_format(world):
    docs = [r["text"] for r in read(world, "pretrain/train")]
    zero = [d for d in docs if d.startswith(formats.R1_ZERO_TEMPLATE.split("{prompt}")[0])]
    plain = [d for d in docs if d.startswith("Question: ") and "\nSolution: " in d]
    assert 0.15 < len(zero) / (len(zero) + len(plain)) < 0.35  # r1_zero_frac 0.25
    clean = [d for d in zero if formats.extract_tag("<think>" + d.split("Assistant: <think>")[1], "answer") is not None
             and "</think>" in d]
    assert 0.1 < 1 - len(clean) / len(zero) < 0.3
    zh = [d for d in docs if "所以答案是" in d or "等于" in d]
    en = [d for d in docs if "So the answer is" in d]
    mixed = [d for d in docs if CJK.search(d) and re.search(r"\d+ [-+*] \d+ = \d+", d)]
    assert len(zh) > 0.15 * len(zero + plain) and len(en) > 0.5 * len(zero + plain) and mixed


STEP = r"(\d+) ([-+*]) (\d+) = (\d+)"


def solution_of(doc: str) -> str:
    """The reasoning of a pretraining document in either layout (before its conclusion)."""
    text = doc.split("Assistant: <think>")[1] if "Assistant: <think>" in doc else doc.split("\nSolution: ")[1]
    return text.split("So the answer is")[0]


def test_pretrain_mixes_solution_styles_and_only_rechecks_catch_slips(world):
    """Terse, worked and re-checked solutions in about the configured shares (all-English arithmetic read here).
    Terse and worked ones slip and go on from the wrong value, so their answer follows what they wrote; a re-check
    undoes its step, fails (`not X`) exactly when the step slipped, and the step is then worked out again, so
    re-checked solutions always end right."""
    rows = {r["prompt"]: r for r in read(world, "reasoning/train")}
    styles, wrong, slips, checks = Counter(), Counter(), 0, 0
    for doc in (r["text"] for r in read(world, "pretrain/train") if "Question: " in r["text"] or "User: " in r["text"]):
        prompt = doc.split("User: ")[1].split("\n")[0] if "User: " in doc else doc.split("Question: ")[1].split("\n")[0]
        if prompt not in rows or rows[prompt]["task"] != "arithmetic" or CJK.search(doc):
            continue
        solution, row = solution_of(doc), rows[prompt]
        steps = re.findall(STEP, re.sub(r"Check: [^,.]+", "", solution))   # the solution's steps, not its checks
        style = "recheck" if "Check:" in solution else "terse" if len(steps) == 1 else "worked"
        styles[style] += 1
        answer = re.search(r"So the answer is (\d+)", doc).group(1)
        assert int(steps[-1][3]) == int(answer), doc                                   # the answer it worked out
        wrong[style] += answer != row["answer"]
        for said, check, slip, redone in re.findall(
                r"so (\d+ [-+] \d+ = \d+)\. Check: (\d+ [-+] \d+ = \d+)(?:, not (\d+)\. Wait, [^,]+, so "
                r"(\d+ [-+] \d+ = \d+))?", solution):
            said, check, redone = (re.fullmatch(STEP, x).groups() if x else None for x in (said, check, redone))
            checks += 1
            assert eval(" ".join(check[:3])) == int(check[3]) and check[0] == said[3], doc  # the check is right
            step = redone or said
            assert eval(" ".join(step[:3])) == int(step[3]), doc                          # what goes on is right
            assert bool(slip) == (eval(" ".join(said[:3])) != int(said[3])), doc          # "not" iff it slipped
            assert not slip or (int(slip) == int(said[0]) and int(check[3]) != int(slip)), doc
            slips += bool(slip)
    total = sum(styles.values())
    assert abs(styles["terse"] / total - 0.3) < 0.08 and abs(styles["recheck"] / total - 0.35) < 0.08, styles
    assert wrong["recheck"] == 0 and wrong["worked"] / styles["worked"] > 0.1 and wrong["terse"] > 0, wrong
    assert 0.01 < slips / checks < 0.12, (slips, checks)  # slip_frac recheck 0.05


def test_render_solution_languages():
    steps = [Step(23, "+", 45, 68), Step(68, "-", 17, 51), Step(51, "*", 2, 102)]
    assert render_solution(steps, "zh", random.Random(0)) == "23 加 45 等于 68。 68 减 17 等于 51。 51 乘 2 等于 102。 所以答案是 102。"
    mixed = {render_solution(steps, "mixed", random.Random(seed)) for seed in range(20)}
    assert any(CJK.search(m) and "=" in m for m in mixed) and len(mixed) > 4
    with pytest.raises(ValueError, match="lang"):
        render_solution(steps, "fr", random.Random(0))


def test_bad_sizes_are_named(tmp_path):
    with pytest.raises(ValueError, match="n_reasoning_trian"):
        write_world(tmp_path, sizes={"n_reasoning_trian": 5})
    with pytest.raises(ValueError, match="n_general_train"):
        write_world(tmp_path, sizes={**SMALL, "n_general_train": 10})
    with pytest.raises(ValueError, match="n_facts"):
        write_world(tmp_path, sizes={**SMALL, "n_facts": 30})
    with pytest.raises(ValueError, match="lang_mix"):
        write_world(tmp_path, sizes=SMALL, lang_mix={"fr": 1.0})


# sha256 over (relative path, bytes) of every file `write_world(seed=3, sizes=SMALL)` writes, as the world was when
# the pretraining text's solution styles were added: models are being measured on this world, so it must not change
# by accident.
WORLD_SHA256 = "9f7b94508c0f23fe16fdbb5026e4d37d39392f1a8374c72b3418a14a40053065"


def tree_sha256(root: Path, skip: str | None = None) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if skip is None or rel.parts[0] != skip:
            digest.update(str(rel).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_world_bytes_are_pinned(world):
    assert tree_sha256(world) == WORLD_SHA256


def test_preference_data_changes_no_other_output(tmp_path):
    """`r1lab.build` with preference data writes the same world files and tokenizer as the world and tokenizer alone."""
    from r1lab.build import build_all, ensure_tokenizer

    sizes = {**SMALL, "n_reasoning_train": 300, "n_cold_start": 100}
    summary = build_all(tmp_path / "with/world", tmp_path / "with/models", seed=3, sizes=[], world_sizes=sizes,
                        vocab_size=512)
    assert summary["preferences_built"] and (tmp_path / "with/world/preferences/manifest.json").is_file()
    write_world(tmp_path / "without/world", seed=3, sizes=sizes)
    ensure_tokenizer(tmp_path / "without/world", tmp_path / "without/models/tokenizer", 512, rebuild=True)
    for part in ("world", "models"):
        assert tree_sha256(tmp_path / "with" / part, skip="preferences") == tree_sha256(tmp_path / "without" / part)
    summary = build_all(tmp_path / "without/world", tmp_path / "without/models", seed=3, sizes=[], world_sizes=sizes,
                        vocab_size=512)  # an existing world gains its preference data, nothing else is rebuilt
    assert summary["preferences_built"] and not summary["world_built"] and not summary["tokenizer_built"]
    assert tree_sha256(tmp_path / "with/world") == tree_sha256(tmp_path / "without/world")
