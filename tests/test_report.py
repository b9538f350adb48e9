"""A pipeline's report.md opens with R1's findings, computed from its evaluations' metrics.json files and marked as
holding or not, then the base's and R1-Zero's completions of the same prompts; the pipeline's last lines print them."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from r1lab.infra.findings import NONE, findings, side_by_side
from r1lab.infra.report import pipeline_report, plot_curves
from r1lab.infra.utils import ROOT

BASE = {"pass@1": 0.3, "format": 1.0, "length": 60.0, "recheck": 0.1, "terse": 0.8, "lang_mix": 0.0, "answered": 1.0}
R1_ZERO = {"pass@1": 0.4, "format": 1.0, "length": 90.0, "recheck": 0.3, "terse": 0.9, "lang_mix": 0.1, "answered": 1.0}


def evaluations(root: Path, status: str = "done", **models: dict) -> dict:
    """A lineage whose evaluations of `models` (name -> metrics) wrote metrics.json under `root`."""
    stages = {}
    for model, metrics in models.items():
        path = root / f"eval_{model}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"name": model, "metrics": metrics}))
        stages[f"eval_{model}"] = {"status": status, "outputs": {"metrics": str(path)}}
    return {"pipeline_id": "test-1", "stages": stages}


def samples(path: Path, rows: list[tuple[str, str]], k: int = 2) -> Path:
    """samples.jsonl of an evaluation: k completions per (id, completion), then a judged row."""
    lines = [{"id": i, "prompt": f"Solve it.\nUser: question {i}\nAssistant: <think>", "answer": "7",
              "completion": f"{text} (sample {j})"} for i, text in rows for j in range(k)]
    lines.append({"id": rows[0][0], "kind": "general", "prompt": "Hi", "completion": "judged, not shown"})
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return path


def test_the_report_opens_with_the_findings_of_the_evaluated_models(tmp_path):
    lineage = evaluations(tmp_path, pretrain=BASE, r1_zero=R1_ZERO, reasoning_rl={"pass@1": 0.5},
                          rejection_sft={"pass@1": 0.5})
    lineage["stages"] |= evaluations(tmp_path / "late", "running", cold_start={"pass@1": 0.9})["stages"]
    text = pipeline_report(tmp_path, lineage, []).read_text()
    lines = text.splitlines()
    assert lines[0] == "# Pipeline test-1" and lines[2] == "## Findings"
    found = [line for line in lines if line.startswith("- ")]
    assert found == [
        "- holds: R1-Zero's RL raises pass@1 over the base: 0.300 -> 0.400 (+10.0 points).",
        "- holds: R1-Zero thinks longer: mean response length 60.000 -> 90.000 tokens (+50.0%).",
        "- holds: R1-Zero re-checks its steps more often: re-check share 0.100 -> 0.300 (x3.0).",
        "- does not hold: R1-Zero answers less tersely: share with at most one equation 0.800 -> 0.900.",
        "- holds: Rejection SFT (from the base) matches or beats reasoning RL: pass@1 0.500 vs 0.500 (+0.0 points).",
    ]   # cold start's evaluation has not finished: its finding is left out, as are distill's, all-scenario RL's
    assert text.index("## Findings") < text.index("## Evaluations")
    assert "| model | pass@1 | format | lang_mix | length | recheck | terse | answered |" in text


def test_a_finding_is_left_out_without_both_models_or_its_metric():
    checked = findings({"pretrain": {"pass@1": 0.3, "terse": 0.5}, "r1_zero": {"pass@1": 0.2}, "distill": {}})
    assert [(c.name, c.holds) for c in checked] == [("r1_zero_pass", False)]
    assert findings({"pretrain": BASE}) == []
    assert findings({"reasoning_rl": {"pass@1": 0.5}, "rejection_sft": {"pass@1": 0.49}})[0].holds is False


def test_base_and_r1_zero_answer_the_same_prompts_side_by_side(tmp_path):
    base = samples(tmp_path / "base.jsonl", [("a", "base a"), ("b", "base b"), ("c", "base " + "long " * 200),
                                            ("d", "base d"), ("e", "base e")])
    rl = samples(tmp_path / "rl.jsonl", [("e", "rl e"), ("d", "rl d"), ("c", "rl c"), ("a", "rl a")])
    text = "\n".join(side_by_side({"pretrain": base, "r1_zero": rl}, n=3, chars=100, width=40))
    assert [line for line in text.splitlines() if line.endswith(":")] == ["`a`, answer 7:", "`c`, answer 7:",
                                                                            "`d`, answer 7:"]   # b: only the base's
    assert f"{'base a (sample 0)':<40} | rl a (sample 0)" in text and "(sample 1)" not in text
    assert "User: question c\nAssistant: <think>" in text and "Solve it." not in text and "judged" not in text
    assert text.count("long") == 19 and " ..." in text and text.count("```") == 6   # trimmed to 100 characters
    assert side_by_side({"pretrain": base, "r1_zero": tmp_path / "missing.jsonl"}) == []


def test_the_report_shows_the_completions_from_the_evaluations_samples(tmp_path):
    lineage = evaluations(tmp_path, pretrain=BASE, r1_zero=R1_ZERO)
    samples(tmp_path / "eval_pretrain" / "samples.jsonl", [("a", "base says 6")])
    samples(tmp_path / "eval_r1_zero" / "samples.jsonl", [("a", "rl says 7")])
    text = pipeline_report(tmp_path, lineage, []).read_text()
    assert text.index("## Findings") < text.index("## Base vs R1-Zero, same prompts") < text.index("## Evaluations")
    assert "base says 6 (sample 0)" in text and "rl says 7 (sample 0)" in text


def test_the_pipeline_ends_by_printing_the_report_path_findings_and_headline(tmp_path, monkeypatch, capsys):
    """`run`'s last lines, after stages faked to have evaluated the base and R1-Zero."""
    import r1lab.pipeline

    def evaluated(cfg, stages, out, lineage) -> bool:
        for name, entry in evaluations(out, pretrain=BASE, r1_zero=R1_ZERO)["stages"].items():
            lineage.record(name, **entry)
        return False

    monkeypatch.setattr(r1lab.pipeline, "run_local", evaluated)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        r1lab.pipeline.run(compose("pipeline", overrides=["pipeline=tiny", f"paths.artifacts_dir={tmp_path}"]))
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'tiny' / 'report.md'}" in printed
    assert "Findings:\n- holds: R1-Zero's RL raises pass@1 over the base: 0.300 -> 0.400" in printed
    assert "- does not hold: R1-Zero answers less tersely" in printed
    assert "| model | pass@1 | length | recheck | terse | lang_mix |\n" in printed and "answered" not in printed
    assert NONE not in printed


def test_the_re_check_share_is_plotted(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train/recheck,train/completion_len_mean\n0,0.1,50\n1,,\n2,0.3,60\n")
    written = plot_curves({"r1_zero": tmp_path / "metrics.csv"}, tmp_path)
    assert "recheck.png" in written and (tmp_path / "recheck.png").is_file()
