"""`epochal report SWEEP_DIR`: the tables and plots of a sweep's report.html, opened in headless Chromium."""

import json
import math
import re
import tomllib
from pathlib import Path

import pytest

from epochal.cli import main
from epochal.errors import ConfigError
from epochal.sweep.report import (best_points, parameter_figure, point_row, read_sweep, stopped_points,
                                  sweep_report)
from epochal.sweep.spec import parse_spec
from test_report import CHECK, open_in_chromium, png_size

SPEC = """
task = "toy"
method = "random"
trials = 4
metric = "eval_mse"
[space]
"optim.lr" = { low = 1e-4, high = 1e-1, log = true }
"train.batch_size" = [32, 64, 128]
"task.hidden" = { low = 8, high = 64 }
"""


def point(trial, value, status="completed", lr=1e-3, batch=32, reason=None, runs=("0",)):
    return {"point": f"p{trial}", "params": {"optim.lr": lr, "train.batch_size": batch, "task.hidden": 16},
            "status": status, "value": value if status == "completed" else None, "std": 0.01 if value else None,
            "failure_reason": reason, "trials": [trial], "runs": {seed: f"runs/p{trial}-seed{seed}" for seed in runs}}


POINTS = [point(0, 0.5), point(1, 0.2, lr=1e-2, batch=64), point(2, None, "failed", reason="seed 0: lr too big", runs=()),
          point(3, 0.2, lr=3e-2), point(4, None, "pruned", reason="pruned by the median pruner after epoch 1"),
          point(5, 0.9, lr=1e-4), point(6, None, "running")]


def summary(direction="minimize", points=POINTS):
    return {"sweep": "fake", "state": "finished", "task": "toy", "metric": "eval_mse", "direction": direction,
            "points_asked": 7, "counts": {"completed": 4, "failed": 1, "pruned": 1, "running": 1}, "points": points}


def sweep_folder(tmp_path, content, spec=SPEC) -> Path:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "spec.toml").write_text(spec)
    (folder / "sweep.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def test_best_points_follow_the_objectives_direction():
    assert [e["point"] for e in best_points(summary("minimize"))] == ["p1", "p3", "p0", "p5"]  # a tie: trial order
    assert [e["point"] for e in best_points(summary("maximize"))] == ["p5", "p0", "p1", "p3"]
    assert [e["point"] for e in best_points(summary("minimize"), 2)] == ["p1", "p3"]
    assert best_points(summary(points=[point(0, None, "failed")])) == []


def test_failed_and_pruned_points_are_listed_in_trial_order_with_their_reasons():
    stopped = stopped_points(summary(points=list(reversed(POINTS))))
    assert [(e["point"], e["status"], e["failure_reason"]) for e in stopped] == [
        ("p2", "failed", "seed 0: lr too big"), ("p4", "pruned", "pruned by the median pruner after epoch 1")]


def test_a_row_holds_the_parameters_value_status_reason_and_links_to_the_run_folders(tmp_path):
    names = ["optim.lr", "train.batch_size"]
    row = point_row(point(1, 0.2, lr=1e-2, batch=64, runs=("0", "1")), names, tmp_path / "s", tmp_path / "elsewhere")
    assert row[:6] == ["1", "p1", 1e-2, 64, 0.2, 0.01]
    assert "badge completed" in row[6] and row[7] == ""
    assert row[8] == ('<a href="../s/runs/p1-seed0/">p1-seed0</a><br>'
                      '<a href="../s/runs/p1-seed1/">p1-seed1</a>')
    failed = point_row(POINTS[2], names, tmp_path, tmp_path)
    assert failed[4] is None and failed[7] == "seed 0: lr too big" and failed[8] is None  # no run folder: a dash


def test_each_parameter_gets_the_axis_its_spec_samples_on():
    space = parse_spec({"task": "toy", "metric": "eval_mse", **tomllib.loads(SPEC)}).space
    lr = parameter_figure(summary(), "optim.lr", space["optim.lr"]).axes[0]
    assert lr.get_xscale() == "log"
    batch = parameter_figure(summary(), "train.batch_size", space["train.batch_size"]).axes[0]
    # Choices are categories, in the spec's order, the untried 128 included.
    assert [t.get_text() for t in batch.get_xticklabels()] == ["32", "64", "128"]
    assert parameter_figure(summary(), "task.hidden", space["task.hidden"]).axes[0].get_xscale() == "linear"
    assert parameter_figure(summary(points=[POINTS[2]]), "optim.lr", space["optim.lr"]) is None



def crossed(points, include_failed):
    space = parse_spec({"task": "toy", "metric": "eval_mse", **tomllib.loads(SPEC)}).space
    figure = parameter_figure(summary(points=points), "optim.lr", space["optim.lr"], include_failed)
    return [line.get_xydata().tolist() for line in figure.axes[0].get_lines() if line.get_marker() == "x"]


GATED = dict(point(7, None, "gate_failed", lr=2e-4, reason="seed 0: gate not passed"), values={"0": 0.7})
# What a sweep wrote before gate_failed existed: failed, with the seeds' values and gate_passed false.
OLD_GATED = dict(point(8, None, "failed", lr=3e-4, reason="seed 0: gate not passed"), values={"0": 0.01},
                 gate_passed=False)


def test_gate_failed_points_stay_out_of_the_plots_and_the_best_table_unless_included():
    assert crossed([*POINTS, GATED, OLD_GATED], include_failed=False) == []
    assert crossed([*POINTS, GATED, OLD_GATED], include_failed=True) == [[[2e-4, 0.7], [3e-4, 0.01]]]
    assert "p8" not in [e["point"] for e in best_points(summary(points=[*POINTS, GATED, OLD_GATED]))]
    best = best_points(summary(points=[*POINTS, GATED, OLD_GATED]), include_failed=True)
    assert best[0]["point"] == "p8" and best[0]["value"] == 0.01
    assert [e["point"] for e in stopped_points(summary(points=[*POINTS, GATED, OLD_GATED]))] == ["p2", "p4"]


def test_the_sweep_report_lists_gate_failed_points_apart_and_says_how_many_it_left_out(tmp_path, capsys):
    folder = sweep_folder(tmp_path, summary(points=[*POINTS, GATED, OLD_GATED]))
    html = sweep_report(folder).read_text()
    assert "<th>gate-failed points</th><td>2, left out of the best points and plots, listed apart</td>" in html
    apart = html.split("<h2>Gate-failed points (left out of the best points and the plots)</h2>")[1].split("<h2>")[0]
    assert "p7" in apart and "p8" in apart and "badge gate_failed" in apart
    best = html.split("<h2>Best points")[1].split("<h2>")[0]
    assert "p7" not in best and "p8" not in best
    assert main(["report", str(folder), "--include-failed"]) == 0
    html = (folder / "report.html").read_text()
    assert "p8" in html.split("<h2>Best points")[1].split("<h2>")[0]


def test_plots_and_the_report_are_written_through_io(tmp_path, written):
    folder = sweep_folder(tmp_path, summary())
    target = sweep_report(folder)
    plots = {folder / "plots" / f"eval_mse-vs-{name}.png" for name in ("optim.lr", "train.batch_size", "task.hidden")}
    assert set(written) == plots | {target, folder / "plots" / "parallel-coordinates.png"}
    assert all(png_size(path) == (700, 400) for path in plots)


@pytest.mark.parametrize("content, fragment", [
    ('{"sweep": "s", "points": [', "sweep.json: not valid JSON (Expecting value"),
    ({"sweep": "s", "state": "starting"}, "sweep.json: no metric, direction, points yet (sweep state 'starting')"),
    (summary(points=[{"point": "p0", "params": {}}]), "sweep.json: points[0] has no status"),
    (summary(points=[point(0, 0.5), dict(point(1, 0.2), value="0.2")]),
     "sweep.json: points[1].value: '0.2' is not a number or null"),
    (summary(direction="up"), "sweep.json: direction 'up'; allowed: minimize, maximize"),
])
def test_a_bad_or_partial_sweep_json_is_one_line(tmp_path, capsys, content, fragment):
    folder = sweep_folder(tmp_path, content)
    assert main(["report", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and not (folder / "report.html").exists()


def test_what_report_accepts_is_named_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "no such folder; allowed: a run folder made by `epochal run` or a sweep folder" in capsys.readouterr().err
    (tmp_path / "spec.toml").write_text(SPEC)  # a folder of specs is not a sweep folder
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nor a sweep folder (no sweep.json)" in err
    folder = sweep_folder(tmp_path, summary())
    (folder / "spec.toml").unlink()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spec.toml: no such file" in err
    (folder / "spec.toml").write_text('task = "toy"\nmetric = "eval_mse"\n')
    with pytest.raises(ConfigError, match=r"spec.toml: spec.space: missing or empty"):
        read_sweep(folder)


# A real sweep, sized for a test: 3 random points of a 2-epoch toy run; the gate fails the smallest learning rate.
REAL_SPEC = """
task = "toy"
method = "random"
trials = 3
metric = "eval_mse"
sampler_seed = 0
[space]
"optim.lr" = { low = 1e-4, high = 1e-1, log = true }
"train.batch_size" = [32, 64]
[set]
"train.max_epochs" = 2
"task.n_train" = 128
"task.n_eval" = 64
"log.plots" = false
"gate.below" = { eval_mse = 0.3 }
"""


@pytest.mark.slow
def test_sweep_report_opens_in_chromium_and_lists_every_trial_and_the_failed_ones_reason(tmp_path, capsys):
    (tmp_path / "spec.toml").write_text(REAL_SPEC)
    assert main(["sweep", str(tmp_path / "spec.toml"), "--out", str(tmp_path), "--id", "rand"]) == 0
    sweep_dir = tmp_path / "rand"
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    failed = [p for p in points if p["status"] == "gate_failed"]
    assert len(points) == 3 and len(failed) == 1 and "gate not passed" in failed[0]["failure_reason"]
    capsys.readouterr()
    assert main(["report", str(sweep_dir)]) == 0
    report = sweep_dir / "report.html"
    assert capsys.readouterr().out.strip() == f"report: {report}"
    html = report.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    everything = html.split("<h2>All points, in the order they were tried</h2>")[1]
    rows = re.findall(r"<tr><td>.*?</tr>", everything)
    assert [re.search(r"<td>([0-9a-f]{12})</td>", row).group(1) for row in rows] == [
        p["point"] for p in sorted(points, key=lambda p: p["trials"][0])]
    failed_row = next(row for row in rows if failed[0]["point"] in row)
    assert "badge gate_failed" in failed_row and "gate not passed (eval_mse &lt; 0.3)" in failed_row
    assert f'href="runs/{failed[0]["point"]}-seed0/"' in failed_row
    stopped = html.split("<h2>Gate-failed points (left out of the best points and the plots)</h2>")[1].split("<h2>")[0]
    assert failed[0]["point"] in stopped and "gate not passed" in stopped
    checked = sweep_dir / "checked.html"  # next to report.html: the same relative links
    checked.write_text(html.replace("</head>", CHECK + "</head>"))
    found, console = open_in_chromium(checked, tmp_path / "report.png")
    assert [image["alt"].split(":")[0] for image in found["images"]] == [
        "plots/eval_mse-vs-optim.lr.png", "plots/eval_mse-vs-train.batch_size.png",
        "plots/parallel-coordinates.png", "plots/best-curves.png"]
    assert "too few points for an importance: 2 completed, at least 5" in html
    assert all(image["complete"] and image["width"] > 0 for image in found["images"]), found["images"]
    assert found["errors"] == [] and console == []
    assert png_size(tmp_path / "report.png") == (1000, 1600)


def many_points(count):
    """Completed points whose value follows the learning rate only: the importance must say so."""
    found = []
    for k in range(count):
        lr = 10 ** (-4 + 3 * k / max(1, count - 1))
        entry = point(k, abs(math.log10(lr) + 2.5) + 0.01 * (k % 3), lr=lr, batch=[32, 64, 128][k % 3])
        entry["params"]["task.hidden"] = 8 + (7 * k) % 57
        found.append(entry)
    return found


def test_the_report_ranks_the_parameters_and_draws_every_point_at_once(tmp_path):
    folder = sweep_folder(tmp_path, summary(points=many_points(24)))
    html = sweep_report(folder).read_text()
    assert "Which parameters mattered for eval_mse" in html and "PED-ANOVA" in html
    ranked = re.findall(r'<tr><td>([a-z_.]+)</td><td class="num">([0-9.e-]+)</td></tr>', html)
    assert ranked and ranked[0][0] == "optim.lr"  # the value depends on it alone
    assert (folder / "plots" / "parallel-coordinates.png").stat().st_size > 0
    assert "parallel-coordinates.png" in html


def test_a_small_sweep_says_its_importance_would_mean_nothing(tmp_path):
    html = sweep_report(sweep_folder(tmp_path, summary())).read_text()
    assert "too few points for an importance: 4 completed, at least 5" in html


def test_the_best_points_curves_are_overlaid_from_their_run_folders(tmp_path):
    folder = sweep_folder(tmp_path, summary(points=many_points(6)))
    for entry in many_points(6):
        run = folder / entry["runs"]["0"]
        run.mkdir(parents=True)
        run.joinpath("result.json").write_text(json.dumps({"curves": {"train_loss": [1.0, 0.5, 0.25],
                                                                      "eval_mse": [entry["value"]]},
                                                           "eval_epochs": [1]}))
    html = sweep_report(folder).read_text()
    assert (folder / "plots" / "best-curves.png").stat().st_size > 0 and "best-curves.png" in html
