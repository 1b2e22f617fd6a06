"""Every experiment runs end to end with --quick and writes well-formed outputs."""

import re
import time

import pytest
from experiment_modules import EXPERIMENTS, load

NAMES = ["lr_sweep", "width_depth", "lr_decay", "activations", "optimizers", "batch_size",
         "cnn_vs_mlp", "batchnorm"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_table_and_figures(name, tmp_path, monkeypatch):
    start = time.perf_counter()
    headline = load(name, monkeypatch).main(["--quick", "--out", str(tmp_path)])
    assert time.perf_counter() - start < 60  # --quick is meant for ~30 s on a 2-core CPU
    assert headline and headline.endswith(".")
    report = (tmp_path / "results.md").read_text()
    assert report.startswith(f"# {name}\n")
    assert headline in report
    tables = re.findall(r"^\| .+ \|\n\|(?:---\|)+\n((?:\| .+ \|\n)+)", report, re.M)
    assert tables and all(len(t.strip().splitlines()) >= 1 for t in tables)
    figures = re.findall(r"!\[[^]]+\]\(([^)]+\.png)\)", report)
    assert len(figures) >= 2
    for figure in figures:
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, figure
    assert (tmp_path / "sweep" / "results.csv").exists()


def test_every_experiment_has_a_config_and_is_in_the_readme():
    readme = (EXPERIMENTS.parent / "README.md").read_text()
    for name in [*NAMES, "backprop_worked_example"]:
        assert (EXPERIMENTS / f"{name}.py").exists()
        assert f"experiments/{name}.py" in readme, name
    for name in NAMES:
        assert (EXPERIMENTS.parent / "configs" / "experiments" / f"{name}.toml").exists()
