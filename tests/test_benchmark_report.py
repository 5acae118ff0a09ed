"""The benchmark report: BENCHMARKS.md and the README's benchmark section are what bench/report.py
makes of the committed results (no benchmark runs here), results are keyed by pytest node id, and
the headline tables are built only from cases that exist."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("report")
benchutil = _load("benchutil")


def test_readme_and_benchmarks_md_are_generated_from_the_results():
    out_of_date = [path.name for path, _ in report.stale(report.load_results())]
    assert not out_of_date, f"{out_of_date} differ from the committed results: run python bench/report.py"


def test_committed_results_are_keyed_by_node_id():
    results = report.load_results()
    assert results, "no results under bench/results"
    for result in results:
        ids = [case.get("id") for case in result["cases"]]
        assert None not in ids, f"{result['device_name']}: cases without a node id (rerun the suites)"
        assert len(ids) == len(set(ids)), f"{result['device_name']}: a node id appears twice"
        for node_id in ids:
            path, _, test = node_id.partition("::")
            assert path.startswith("bench/bench_") and (ROOT / path).is_file() and test, node_id
        # The report reads one case per (group, implementation): a second would be ambiguous.
        keys = [(case["group"], case["impl"]) for case in result["cases"]]
        assert len(keys) == len(set(keys)), f"{result['device_name']}: a group holds an implementation twice"


def _case(node_id, median_ms=1.0, **fields):
    return {"id": node_id, "median_ms": median_ms, **fields}


def test_merge_keeps_suites_that_share_a_test_name_apart():
    name = "test_forward[cpu-N256-D128-reidfast:cpu]"
    triplet, margin = f"bench/bench_triplet_select.py::{name}", f"bench/bench_adaptive_margin.py::{name}"
    earlier = [_case(triplet, 1.0), _case("bench/bench_pyramid_pool.py::test_forward[x]", 2.0)]
    merged = benchutil.merge_cases(earlier, [_case(margin, 3.0)])
    assert [case["id"] for case in merged] == [triplet, "bench/bench_pyramid_pool.py::test_forward[x]", margin]
    rerun = benchutil.merge_cases(merged, [_case(triplet, 4.0)])
    assert [(case["id"], case["median_ms"]) for case in rerun] == [
        ("bench/bench_pyramid_pool.py::test_forward[x]", 2.0), (margin, 3.0), (triplet, 4.0)
    ]
    # Cases written before results carried a node id cannot be matched to a rerun: dropped.
    assert benchutil.merge_cases([{"name": name, "median_ms": 5.0}], [_case(triplet)]) == [_case(triplet)]


def _pool_case(impl, median_ms, passname="forward", dtype="float32", shape=(32, 2048, 24, 8)):
    return {
        "id": f"bench/bench_pyramid_pool.py::test_{passname}[{impl}-{dtype}]", "op": "pyramid_pool",
        "impl": impl, "passname": passname, "shape": list(shape), "dtype": dtype, "median_ms": median_ms,
        "group": f"pyramid_pool {passname} cpu {list(shape)} {dtype}", "device": "cpu", "date": "2026-01-02",
    }


POOL = report.HEADLINES[0]


def test_headline_rows_come_only_from_cases_that_exist():
    assert POOL.op == "pyramid_pool"
    cases = [_pool_case("reidfast:cpu", 2.0), _pool_case("reference", 100.0), _pool_case("stripes", 10.0),
             _pool_case("reidfast:cpu", 20.0, "forward+backward"), _pool_case("reference", 600.0, "forward+backward"),
             _pool_case("reidfast:cpu", 1.0, shape=(8, 256, 12, 4))]  # not a headline shape
    table = report.headline_table(POOL, cases)
    lines = table.splitlines()
    assert lines[0].endswith(", float32:")  # one dtype: named in the title, no column
    assert lines[2] == "| pass | shape | implementation | median ms | vs per-window reference | vs stripes |"
    assert lines[4:] == [
        "| forward | 32 x 2048 x 24 x 8 | `reidfast:cpu` | 2.00 | 50.0x | 5.0x |",
        "| forward+backward | 32 x 2048 x 24 x 8 | `reidfast:cpu` | 20.0 | 30.0x | - |",
    ]
    assert report.headline_table(POOL, [_pool_case("reference", 100.0)]) is None


def test_headline_table_names_dtypes_when_they_differ():
    cases = [_pool_case("reidfast:cuda", 2.0), _pool_case("reidfast:cuda", 1.0, dtype="bfloat16")]
    lines = report.headline_table(POOL, cases).splitlines()
    assert lines[2] == "| shape | dtype | implementation | median ms |"
    assert [line.split(" | ")[1] for line in lines[4:]] == ["bfloat16", "float32"]


def test_readme_section_and_splice():
    result = {"device_name": "Some CPU, 2 threads", "date": "2026-01-03", "torch": "2.x", "reidfast": "0.y",
              "cases": [_pool_case("reidfast:cpu", 2.0), _pool_case("reference", 100.0)]}
    section = report.readme_section([result])
    assert section.startswith("### Some CPU, 2 threads\n\nMeasured 2026-01-02, torch 2.x, reidfast 0.y.")
    assert "No GPU has been measured yet" in section
    readme = f"intro\n{report.BEGIN}\nold figures\n{report.END}\nafter\n"
    assert report.splice(readme, "new") == f"intro\n{report.BEGIN}\n\nnew\n\n{report.END}\nafter\n"
    with pytest.raises(ValueError, match="README.md must hold the lines"):
        report.splice("no markers", "new")


def _deploy_case(model, batch, runtime, median_ms, p90_ms, dtype="float32"):
    return {
        "id": f"bench/bench_deploy.py::test_latency[{model}-{batch}-{runtime}-cpu]", "op": "deploy", "impl": runtime,
        "model": model, "passname": "inference", "shape": [batch, 3, 256, 128], "dtype": dtype, "rounds": 5,
        "median_ms": median_ms, "p90_ms": p90_ms, "group": f"deploy {model} cpu batch={batch}", "device": "cpu",
        "gflop_per_image": 2.5, "setup_s": 12.25,
    }


def test_deploy_table_orders_runtimes_and_compares_with_eager():
    cases = [_deploy_case("osnet", 16, "onnxruntime", 400.0, 410.0), _deploy_case("osnet", 1, "aoti", 20.0, 25.0),
             _deploy_case("osnet", 1, "eager", 50.0, 60.0), _deploy_case("osnet", 16, "eager", 800.0, 900.0),
             _deploy_case("osnet", 1, "tensorrt-fp16", 2.0, 2.5, dtype="float16"), _pool_case("reference", 1.0),
             {"op": "deploy-matmul", "shape": [4096, 4096, 4096], "gflop": 137.4, "median_ms": 2000.0}]
    lines = report.deploy_table(cases).splitlines()
    assert lines[-1] == "For scale, a 4096 x 4096 float32 matrix product (`torch.mm`) runs at 68.7 GFLOP/s on this device."
    lines = lines[:-2]
    assert lines[2] == ("| model | input | batch | runtime | median ms | p90 ms | images/s | GFLOP/s | vs eager | setup s "
                        "| rounds |")
    assert lines[4:] == [
        "| osnet | 256 x 128 | 1 | `eager` | 50.0 | 60.0 | 20.0 | 50.0 | 1.00x | 12.2 | 5 |",
        "| osnet | 256 x 128 | 1 | `aoti` | 20.0 | 25.0 | 50.0 | 125.0 | 2.50x | 12.2 | 5 |",
        "| osnet | 256 x 128 | 1 | `tensorrt-fp16` (float16) | 2.00 | 2.50 | 500.0 | 1250.0 | 25.00x | 12.2 | 5 |",
        "| osnet | 256 x 128 | 16 | `eager` | 800 | 900 | 20.0 | 50.0 | 1.00x | 12.2 | 5 |",
        "| osnet | 256 x 128 | 16 | `onnxruntime` | 400 | 410 | 40.0 | 100.0 | 2.00x | 12.2 | 5 |",
    ]
    assert report.deploy_table([_pool_case("reference", 1.0)]) is None


@pytest.mark.parametrize("value, text", [(0.6312, "0.631"), (2.184, "2.18"), (21.64, "21.6"), (1261.4, "1261")])
def test_milliseconds_keep_three_figures(value, text):
    assert report._milliseconds(value) == text


def test_training_section_renders_each_recorded_study(tmp_path):
    import json

    machine = {"device": "CPU X", "threads": 2, "torch": "2.0", "date": "2026-01-01"}
    dataset = {"identities": 100}
    row = {"mAP": 0.30, "rank1": 0.40, "mINP": 0.10, "train_seconds": 150.0, "config": "pyramid-synthetic"}
    switching = {"switches": 90, "eq2_steps": 0.3, "unit_steps": 0.25, "other_steps": 0.45,
                 "id_weight": {"median": 1.1e-10}, "triplet_weight": {"median": 0.0094}}
    modes = {"machine": machine, "dataset": dataset, "seeds": [0, 1], "runs": [
        {**row, "name": "paper", "seed": 0, "switching": switching},
        {**row, "name": "paper", "seed": 1, "mAP": 0.20, "switching": {**switching, "switches": 80}}]}
    trial = {"round": 0, "trial": 0, "params": {"triplet_weight": 1.0, "margin": 0.1, "k": 1, "p": 1},
             "first_half": 2.0, "second_half": 1.5, "drop": 0.25, "objective": 0.1}
    search = {"machine": machine, "dataset": dataset, "seeds": [0], "runs": [
        {**row, "name": "Bayesian search", "seed": 0,
         "search": {"trials": [trial], "exploitations": [{"round": 0, "epochs": 4, "params": trial["params"]}]}}]}
    (tmp_path / "pyramid-modes.json").write_text(json.dumps(modes))
    (tmp_path / "pla-search.json").write_text(json.dumps(search))
    text = report.training_section(tmp_path)
    assert ("| paper | 25.0 (20.0-30.0) | 40.0 (40.0-40.0) | 10.0 (10.0-10.0) | 85 (80-90) | 30 (30-30) % | "
            "25 (25-25) % | 45 (45-45) % | 1.10e-10 / 1.10e-10 | 9.40e-03 / 9.40e-03 |") in text
    assert "| 0 | 0 | 1.000 | 0.100 | 1 | 1 | 2.0000 | 1.5000 | 0.250 | 0.100 |" in text
    assert "round 0: 4 epochs with lambda 1.000, m 0.100, k 1, p 1" in text
    assert "Every method" not in text  # no methods.json recorded
    assert report.training_section(tmp_path / "none").startswith("No training study")
