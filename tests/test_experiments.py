"""Every experiment runs end to end with --quick and writes well-formed outputs."""

import pathlib
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


def test_a_rerun_replaces_the_sweep_and_a_failed_one_keeps_it(tmp_path, monkeypatch):
    """Run again into the same --out, an experiment deleted its sweep's results.jsonl and
    was then refused for the study left beside it: the results were lost."""
    import os

    import optuna

    from jaxnn import config, experiment, sweep

    def tiny(rates):
        return config.load(os.path.join(experiment.ROOT, "configs", "tiny.toml"), [
            f"sweep.grid={{learning_rate = {rates}}}", "training.epochs=1", "output.plots=false"])

    exp = experiment.Experiment("t", tiny([0.05, 0.1]), str(tmp_path), quick=True)
    exp.sweep()
    exp.sweep(tiny([0.2, 0.3]))
    rates = sorted(r["values"]["learning_rate"] for r in sweep.read_results(tmp_path / "sweep"))
    assert rates == [0.2, 0.3]
    journal = optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweep" / sweep.STUDY_FILE))
    study = optuna.load_study(study_name="sweep",
                              storage=optuna.storages.journal.JournalStorage(journal))
    assert sorted(t.params["learning_rate"] for t in study.trials) == [0.2, 0.3]

    def interrupted(config_, workdir, **unused_kwargs):
        os.makedirs(workdir)
        (pathlib.Path(workdir) / sweep.RESULTS).write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exp.sweep(tiny([0.4, 0.5]))
    assert len(sweep.read_results(tmp_path / "sweep")) == 2
    assert sorted(os.listdir(tmp_path)) == ["sweep"]


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--set", "bogus.key=1"], "lr_sweep.toml: bogus: unknown section"),
    (["--set", "training.epochs=-1"], "lr_sweep.toml: training.epochs: must be >= 1, got -1"),
    (["--set", "=3"], "lr_sweep.toml: --set: expected key.path=value, got '=3'"),
    (["--out", "{tmp}/afile"], "--out: {tmp}/afile is a file, not a directory"),
    (["--out", ""], "--out: empty; give a value or leave the flag out"),
    (["--out", "/proc/jaxnn"], "--out: /proc/jaxnn: cannot create the directory"),
    # A run's or sweep's directory: the experiment wrote its files among theirs.
    (["--out", "{tmp}/asweep"], "--out: {tmp}/asweep holds a sweep; an experiment needs")])
def test_bad_arguments_are_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    # Each was a traceback with exit 1 (a raw ConfigError, FileExistsError, ...).
    from jaxnn import experiment

    (tmp_path / "afile").write_text("kept")
    (tmp_path / "asweep").mkdir()
    for name in ("sweep.toml", "results.jsonl"):  # what a sweep's directory holds
        (tmp_path / "asweep" / name).write_text("")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    with pytest.raises(SystemExit) as exit_:
        experiment.start("lr_sweep", "doc", argv=argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("experiments/lr_sweep.py: error: ") and err.count("\n") == 1
    assert fragment.format(tmp=tmp_path) in err


def test_a_bad_set_that_only_the_sweep_reads_is_one_line_and_exit_2(tmp_path, capsys):
    """``--set 'sweep.grid.foo=[1, 2]'`` loads as a config; only the sweep refuses it, and
    that was a traceback with exit 1. Nothing is left in ``--out``."""
    from jaxnn import experiment

    exp = experiment.start("lr_sweep", "doc", argv=[
        "--quick", "--out", str(tmp_path), "--set", "sweep.grid.foo=[1, 2]"])
    with pytest.raises(SystemExit) as exit_:
        exp.sweep()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("experiments/lr_sweep.py: error: ") and err.count("\n") == 1
    assert "sweep.grid.foo: unknown hyperparameter" in err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_without_what_the_script_reads_is_refused_before_training(tmp_path, capsys):
    """``--set 'sweep.grid={width = [8, 16]}'`` replaced the learning rates lr_sweep compares:
    a KeyError traceback once the whole sweep had run."""
    from jaxnn import experiment

    exp = experiment.start("lr_sweep", "doc", argv=[
        "--quick", "--out", str(tmp_path), "--set", "sweep.grid={width = [8, 16]}"],
        reads=["learning_rate"])
    with pytest.raises(SystemExit) as exit_:
        exp.sweep()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert ("sweep: this experiment compares its trials by learning_rate, and the sweep does "
            "not vary learning_rate (it sweeps width)") in err
    assert list(tmp_path.iterdir()) == []


def test_an_experiment_whose_trials_all_diverge_says_so(tmp_path, capsys, monkeypatch):
    """Every trial diverged: ``result["best"]`` was None, and the scripts' headlines ended in
    a TypeError traceback, leaving the earlier run's results.md beside the new sweep."""
    lr_sweep = load("lr_sweep", monkeypatch)
    quick = ["--quick", "--out", str(tmp_path), "--set", "training.epochs=2"]
    lr_sweep.main(quick)
    assert (tmp_path / "results.md").exists()
    with pytest.raises(SystemExit) as exit_:
        lr_sweep.main([*quick, "--set", "sweep.grid.learning_rate=[1e6, 1e7]",
                       "--set", "optimizer.name='sgd'"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1
    assert err.startswith("experiments/lr_sweep.py: no trial completed"), err
    assert not (tmp_path / "results.md").exists()  # it described the sweep replaced
    assert {row["status"] for row in sweep_rows(tmp_path / "sweep")} == {"diverged"}


def sweep_rows(workdir):
    from jaxnn import sweep

    return sweep.read_results(str(workdir))


def test_worked_example_parses_its_arguments(monkeypatch, capsys):
    # --help printed nothing of the kind and ran the walk-through.
    with pytest.raises(SystemExit) as exit_:
        load("backprop_worked_example", monkeypatch).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: experiments/backprop_worked_example.py")
    assert "Forward pass" not in out
