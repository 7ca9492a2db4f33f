"""Plots and report.html: drawn from the run folder, opened in headless Chromium."""

import json
import math
import os
import re
import shutil
import subprocess

import pytest

import epochal
from epochal.cli import main
from epochal.plots import read_run, smooth, stop_marks, use_log_scale

SETTINGS = {"train.max_epochs": 4, "train.progress": False, "task.n_train": 256, "task.n_eval": 128,
            "train.log_every": 2}

# Runs inside the page after it loaded: how each image fared and every error the page raised.
CHECK = """<script>
const errors = [];
window.addEventListener("error", e => errors.push(String(e.message || e.target.src || e.type).slice(0, 80)), true);
const reportError = console.error;
console.error = (...args) => { errors.push(args.join(" ")); reportError(...args); };
window.addEventListener("load", () => {
  const images = [...document.images].map(img => ({alt: img.alt, width: img.naturalWidth, complete: img.complete}));
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({images, errors});
  document.body.appendChild(out);
});
</script>"""


def train(tmp_path, experiment_id, settings):
    return epochal.run("toy", overrides={**SETTINGS, **settings}, out_dir=tmp_path, experiment_id=experiment_id,
                       log=lambda _: None)


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    assert found, "chromium is not installed; .ci/run should have installed it"
    return found


def open_in_chromium(page, screenshot):
    """Load ``page`` headless; (the check script's findings, the browser's console error lines)."""
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={page.parent / 'chromium-profile'}",
               "--virtual-time-budget=5000", "--window-size=1000,1600"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = subprocess.run([*browser, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    found = re.search(r'<pre id="check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the check script did not run: {dom.stderr[-2000:]}"
    console = [line for line in (dom.stderr + shot.stderr).splitlines()
               if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")), console


@pytest.mark.slow
def test_run_report_opens_in_chromium_with_every_image_loaded_and_no_console_error(tmp_path, capsys):
    run = train(tmp_path, "gated", {"gate.below": {"eval_mse": 0.45}, "gate.stop": False})
    png_size(tmp_path / "gated" / "plots" / "loss.png")
    (tmp_path / "gated" / "samples.png").write_bytes((tmp_path / "gated" / "plots" / "loss.png").read_bytes())
    assert main(["report", str(run.run_dir), "--loss-scale", "log"]) == 0
    report = run.run_dir / "report.html"
    assert capsys.readouterr().out.strip() == f"report: {report}"
    html = report.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    for fragment in ("completed", "max_epochs reached", "eval_mse", "last weights", "[gate]", "git commit"):
        assert fragment in html, fragment
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("</head>", CHECK + "</head>"))
    found, console = open_in_chromium(checked, tmp_path / "report.png")
    assert [image["alt"].split(":")[0] for image in found["images"]] == [
        "plots/loss.png", "plots/metrics.png", "samples.png"]
    assert all(image["complete"] and image["width"] > 0 for image in found["images"]), found["images"]
    assert found["errors"] == [] and console == []
    width, height = png_size(tmp_path / "report.png")
    assert (width, height) == (1000, 1600)


def test_report_of_a_failed_run_names_the_reason_and_a_non_run_folder_is_one_line(tmp_path, capsys):
    run = train(tmp_path, "nan", {"train.max_epochs": 1, "optim.lr": 1e9, "train.grad_clip": 0.0, "log.plots": False})
    assert run.status == "failed"
    assert main(["report", str(run.run_dir)]) == 0
    html = (run.run_dir / "report.html").read_text()
    assert "badge failed" in html and "non-finite loss or gradient norm at step" in html
    assert (run.run_dir / "plots" / "loss.png").exists()  # the report draws what the run did not
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run folder (no config.toml or result.json)" in err


def test_metrics_plot_marks_the_gate_pass_and_early_stopping(tmp_path):
    gated = read_run(train(tmp_path, "g", {"gate.below": {"eval_mse": 10.0}, "log.plots": False}).run_dir)
    assert stop_marks(gated) == [(1, "gate passed (epoch 1)")]
    stopped = train(tmp_path, "e", {"early_stop.enabled": True, "early_stop.metric": "eval_mse", "early_stop.patience": 1,
                                    "optim.lr": 1e-9, "train.max_epochs": 6, "log.plots": False})
    assert stopped.result["epochs"] < 6
    assert stop_marks(read_run(stopped.run_dir)) == [(stopped.result["epochs"],
                                                      f"early stopping (epoch {stopped.result['epochs']})")]


def test_end_of_run_plots_come_from_the_run_folder(tmp_path):
    run = train(tmp_path, "p", {})
    for name in ("loss", "metrics"):
        assert png_size(run.run_dir / "plots" / f"{name}.png") == (700, 400 if name == "loss" else 360)
    data = read_run(run.run_dir)
    assert data.steps == list(range(1, 17)) and data.loss == run.result["curves"]["train_loss"]
    assert data.eval_curves() == {"eval_mse": run.result["curves"]["eval_mse"]}


def test_smoothing_and_log_scale_choice():
    assert smooth([2.0, 2.0, 2.0], 5) == [2.0, 2.0, 2.0]  # bias-corrected: no pull towards zero
    smoothed = smooth([float("nan"), 1.0, 3.0], 3)
    assert math.isnan(smoothed[0]) and smoothed[1] == 1.0 and 1.0 < smoothed[2] < 3.0
    assert use_log_scale([10.0, 0.5], "auto") and not use_log_scale([1.0, 0.5], "auto")
    assert not use_log_scale([10.0, -1.0], "auto") and use_log_scale([1.0], "log")


def test_task_figures_from_result_json_alone():
    from epochal.tasks.regex.plots import length_accuracy_figure, length_bins
    from epochal.tasks.walks.plots import compliance_figure

    tested = {"test_class_acc_len_05_08": 0.9, "test_class_acc_len_01_04": 1.0, "test_ood_class_acc_len_17_20": 0.7,
              "test_class_acc": 0.95}
    assert length_bins(tested) == {"test": [(1, 4, 1.0), (5, 8, 0.9)], "test_ood": [(17, 20, 0.7)]}
    assert length_accuracy_figure({"test": {"last": tested, "best": tested}}, 16) is not None
    assert length_accuracy_figure({"test": {"last": {"test_class_acc": 0.9}}}, 16) is None
    walks = {"eval_epochs": [1, 2], "curves": {"edge_compliance": [0.9, 0.99], "rule_compliance": [0.3, 0.85]}}
    figure = compliance_figure(walks, {"edge_compliance": 0.95, "rule_compliance": 0.8})
    assert [line.get_ydata().tolist() for line in figure.axes[0].get_lines()[::2]] == [[0.9, 0.99], [0.3, 0.85]]
    assert compliance_figure({"eval_epochs": [], "curves": {}}, {}) is None
