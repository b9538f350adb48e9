"""The world's preference data (r1lab.demo.preferences): schemas, correct chosen answers, harmlessness labels that say whether the
vault code leaked, held-out splits kept held out, and determinism."""

import json
import shutil
from collections import Counter
from pathlib import Path

from r1lab.demo.preferences import write_preferences
from r1lab.maths.formats import reasoning_of, summary_of
from r1lab.maths.rewards import check_answer


def read(world: Path, name: str) -> list[dict]:
    with open(world / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def bare(text: str) -> str:
    """The answer inside one of the concise answer styles."""
    return text.removeprefix("The answer is ").removesuffix(".")


def test_helpfulness_pairs_prefer_the_correct_concise_answer(world_dir):
    manifest = json.loads((world_dir / "preferences/manifest.json").read_text())
    for split in ("train", "val", "test"):
        general, pairs = read(world_dir, f"general/{split}"), read(world_dir, f"preferences/helpfulness_{split}")
        assert [p["prompt"] for p in pairs] == [g["prompt"] for g in general]  # held-out prompts stay held out
        assert len(pairs) == manifest["rows"][f"helpfulness_{split}.jsonl"]
        assert set(Counter(p["fault"] for p in pairs)) == {"wrong", "off_topic", "padded"}
        for pair, row in zip(pairs, general):
            assert set(pair) == {"id", "kind", "task", "prompt", "chosen", "rejected", "fault"}
            assert pair["kind"] == "general"
            assert check_answer(bare(pair["chosen"]), row["answer"], row["task"]), pair
            if pair["fault"] == "padded":
                assert f"The answer is {row['answer']}." in pair["rejected"]
                assert len(pair["rejected"]) > len(pair["chosen"]) + 10
            else:
                assert not check_answer(bare(pair["rejected"]), row["answer"], row["task"]), pair


def shows(secret: str, text: str) -> bool:
    return bool(secret) and (secret in text or " ".join(secret) in text)


def leaks(row: dict) -> bool:
    return shows(row["secret"], row["response"])


def test_harmlessness_labels_say_whether_the_vault_code_leaked(world_dir):
    for split in ("train", "val", "test"):
        rows = read(world_dir, f"preferences/harmlessness_{split}")
        assert all(r["label"] == (0 if leaks(r) else 1) for r in rows), split
        assert all((r["secret"] != "") == r["prompt"].startswith("Rule: the vault code is ") for r in rows)
        assert all(r["secret"] in r["prompt"] for r in rows)
        labels = Counter(r["label"] for r in rows)
        assert abs(labels[0] - labels[1]) <= 2, labels
        attacks = [r for r in rows if r["task"] == "vault"]
        assert attacks and {r["label"] for r in attacks} == {0, 1}
    rows = read(world_dir, "preferences/harmlessness_train")
    in_cot_only = [r for r in rows if r["label"] == 0 and not shows(r["secret"], summary_of(r["response"]))]
    assert in_cot_only and all(shows(r["secret"], reasoning_of(r["response"])) for r in in_cot_only)


def test_held_out_vault_prompts_appear_in_no_train_file(world_dir):
    train = {r["prompt"] for name in ("harmlessness_train", "vault_train") for r in read(world_dir, f"preferences/{name}")}
    held_out = [r for split in ("val", "test") for name in ("harmlessness", "vault")
                for r in read(world_dir, f"preferences/{name}_{split}")]
    assert held_out and not {r["prompt"] for r in held_out} & train
    vault = read(world_dir, "preferences/vault_test")
    general_keys = set(read(world_dir, "general/test")[0])
    assert all(set(r) == general_keys | {"secret"} and r["kind"] == "general" and r["secret"] in r["prompt"]
               for r in vault)


def test_same_seed_same_bytes(world_dir, tmp_path):
    shutil.copytree(world_dir / "general", tmp_path / "general")
    write_preferences(tmp_path, seed=0)
    for path in sorted((world_dir / "preferences").iterdir()):
        assert (tmp_path / "preferences" / path.name).read_bytes() == path.read_bytes(), path.name
