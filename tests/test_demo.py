"""`reidfast demo --quick`: the whole demo pipeline (set generation, three trainings, the report)
on a tiny set; the figures of a real demo are in the README."""

import json

from reidfast.cli import main as cli
from reidfast.demo import markdown_report


def test_quick_demo_writes_its_report(tmp_path, capsys):
    output, data = tmp_path / "demo", tmp_path / "data"
    assert cli(["demo", "--quick", "--output", str(output), "--data", str(data)]) == 0
    results = json.loads((output / "results.json").read_text())
    assert [run["model"] for run in results["runs"]] == ["Pyramid", "PCB", "Global baseline"]
    assert all(run["steps"] == 2 and 0 <= run["mAP"] <= 1 for run in results["runs"])
    assert (data.parent / "data-quick" / "synthetic_reid.json").is_file()
    assert (output / "pyramid-curves.png").is_file() and len(list((output / "pyramid-ranked").glob("*.png"))) == 2
    report = (output / "report.md").read_text()
    assert report in capsys.readouterr().out
    assert report.splitlines()[0] == "| model | mAP | rank-1 | rank-5 | mINP | training time | images/s |"


def test_report_gives_mean_and_range_over_seeds():
    runs = [
        {"model": "Pyramid", "seed": seed, "mAP": m, "rank1": 0.5, "rank5": 0.75, "mINP": 0.125,
         "train_seconds": 100.0 + seed, "images_per_s": 30.0, "wall_seconds": 180.0}
        for seed, m in ((0, 0.30), (1, 0.40), (2, 0.35))
    ]
    results = {"runs": runs, "seeds": [0, 1, 2], "setup_seconds": 12.0,
               "dataset": {"identities": 100, "train": 1600, "query": 430, "gallery": 1330}}
    lines = markdown_report(results).splitlines()
    assert lines[2] == "| Pyramid | 35.0 (30.0-40.0) | 50.0 (50.0-50.0) | 75.0 (75.0-75.0) | 12.5 (12.5-12.5) | 101 s | 30.0 |"
    assert "Seeds 0, 1, 2 (mean, and range in brackets)." in lines[-1]
    assert "took 3.0, 3.0, 3.0 min (excluded: generating the set, or reading it from its cache, 12 s)" in lines[-1]
