"""The README's API example runs and says what it claims."""

import contextlib
import io
import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_api_example_runs_and_its_comments_hold():
    text = README.read_text()
    code = re.search(r"## The API in ten lines\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 10
    namespace = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(code, namespace)
    assert namespace["out_shape"] == (None, 10)
    total = re.search(r"# layers, shapes, ([\d,]+) params", code).group(1)
    assert f"total params: {total}" in output.getvalue()
    assert "[0]['w']" in output.getvalue()  # manual.check printed its table


def test_quick_start_is_two_commands():
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", README.read_text(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["pip install -e . && jaxnn sweep configs/sweep_lr_width.toml",
                        "pip install -e '.[test]' && python -m pytest"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test]'" in ci
    assert "\npython -m pytest\n" in ci


def test_first_command_writes_table_best_config_and_plots(tmp_path, capsys):
    """The first quick-start command, cut to 2 epochs: its directory holds what the README
    promises and its closing lines name the figures."""
    from jaxnn import cli

    workdir = tmp_path / "sweep"
    config = str(README.parent / "configs" / "sweep_lr_width.toml")
    assert cli.main(["sweep", config, "--set", "training.epochs=2",
                     "--workdir", str(workdir)]) == 0
    for name in ("results.jsonl", "results.csv", "best.toml", "study.journal", "sweep.toml",
                 "table.txt"):
        assert (workdir / name).stat().st_size > 0, name
    from jaxnn import sweep

    rows = sweep.read_results(str(workdir))
    assert len(rows) == 32  # 8 learning rates x 4 widths
    column = [line.split()[6] for line in (workdir / "table.txt").read_text().splitlines()[2:]]
    ranked = [float(value) for value in column if value != "-"]  # "-": a diverged trial
    assert len(column) == 32 and "-" not in column[:len(ranked)]  # diverged ones last
    assert ranked == sorted(ranked, reverse=True)  # best first
    best = max(row["val_accuracy"] for row in rows if row["val_accuracy"] is not None)
    assert best == pytest.approx(ranked[0], abs=5e-5)
    figures = sorted(workdir.glob("*.png"))
    assert figures
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert closing.startswith("plots: ")
    assert set(closing.removeprefix("plots: ").split(", ")) == {str(f) for f in figures}


def test_sweep_example_is_valid():
    import tomllib

    from jaxnn import config, sweep

    block = re.search(r"```toml\n(\[sweep\].*?)```", README.read_text(), re.S).group(1)
    cfg = config.from_dict(tomllib.loads(block), "README.md")
    trials = sweep.trials(cfg)
    assert len(trials) == 4 * 3 * 4
    assert {t.config.model.hidden for t in trials} == {(16, 16), (64, 64), (256, 256)}


@pytest.mark.parametrize("marker", ["--distributed", "--storage"])
def test_multi_process_recipes_run_as_written(tmp_path, marker):
    """The README's several-processes and shared-study recipes, run as written on a small
    sweep (its config path, and the coordinator port, swapped for this test's)."""
    import socket
    import subprocess

    from jaxnn import config

    block = next(b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
                 if marker in b)
    small = tmp_path / "sweep.toml"
    small.write_text(config.dumps(config.load(README.parent / "configs" / "tiny.toml", [
        "output.plots=false", "training.epochs=2",
        "sweep.grid={learning_rate = [0.05, 0.2], width = [4, 9]}"])))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = block.replace("configs/sweep_lr_width.toml", str(small)).replace(
        "127.0.0.1:12345", f"127.0.0.1:{port}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(README.parent)}
    done = subprocess.run(["bash", "-euc", script], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = tmp_path / "runs" / ("shared" if marker == "--distributed" else "lr_width")
    rows = (workdir / "results.jsonl").read_text().splitlines()
    assert len(rows) == 4 and (workdir / "best.toml").exists()


def test_every_config_key_and_default_is_listed():
    """The README's list of config keys is the config's: every key, its default, no other."""
    import tomllib

    from jaxnn import config

    block = re.search(r"```toml\n(\[model\]\nlayers = .*?)```", README.read_text(),
                      re.S).group(1)
    listed = tomllib.loads(block)
    defaults = config.to_dict(config.Config())
    defaults.pop("sweep")
    assert listed == {section: {key: list(value) if isinstance(value, tuple) else value
                                for key, value in keys.items()}
                      for section, keys in defaults.items()}


def test_every_sweep_key_is_described():
    from jaxnn.sweep.spec import SPEC_KEYS

    text = README.read_text()
    section = text[text.index("\n## Sweeps\n"):text.index("\n## Experiments\n")]
    missing = [key for key in SPEC_KEYS
               if f"`{key}`" not in section and f"\n{key} = " not in section
               and f"[sweep.{key}]" not in section]
    assert not missing, missing


def test_the_wrong_stack_message_is_what_init_says():
    import jax

    from jaxnn import Conv2D, Dense, Relu, serial
    from jaxnn.layer import ShapeError

    quoted = re.search(r"A wrong stack fails at `init` with the layer named:\n`(.*?)`",
                       README.read_text(), re.S).group(1)
    with pytest.raises(ShapeError) as error:
        serial(Conv2D(4, 3), Relu(), Dense(10)).init(jax.random.key(0), (None, 8, 8, 1))
    assert str(error.value) == quoted


def test_search_example_plans_as_described():
    """The searching section's TOML: a TPE search of 64 trials asked 16 at a time, pruned by
    successive halving at rungs 4, 12, 36."""
    import tomllib

    from jaxnn import config, run, sweep

    text = README.read_text()
    block = re.search(r"```toml\n(\[sweep\]\nsearch = \"tpe\".*?)```", text, re.S).group(1)
    raw = tomllib.loads(block)
    raw["training"] = {"epochs": 60}
    cfg = config.from_dict(raw, "README.md")
    plan = sweep.make_plan(cfg, run.prepare(cfg))
    assert (plan.search, plan.spec["trials"], plan.spec["batch"]) == ("tpe", 64, 16)
    assert plan.pruning.rungs(0) == (4, 12, 36)


def test_optuna_snippet_loads_a_sweeps_study(tmp_path, monkeypatch):
    from jaxnn import cli

    code = re.search(r"```python\n(import optuna\n.*?)```", README.read_text(), re.S).group(1)
    name = re.search(r'study_name="([^"]+)"', code).group(1)
    config = str(README.parent / "configs" / "tiny.toml")
    assert cli.main(["sweep", config, "--set", "sweep={grid={learning_rate=[0.01, 0.1]}}",
                     "--set", "training.epochs=1", "--set", "output.plots=false",
                     "--workdir", str(tmp_path / "runs" / name)]) == 0
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(code, namespace)
    assert len(namespace["study"].trials) == 2


def test_the_layer_table_names_every_argument():
    """Each layer factory's arguments (those after the ones its first cell shows) appear in
    the README's layer table, in its row."""
    import inspect

    import jaxnn

    text = README.read_text()
    table = text[text.index("| layer | arguments |"):text.index("\nBranches:")]
    checked = 0
    for row in table.splitlines()[2:]:
        first, arguments = row.split(" | ")[0].strip("| "), row.split(" | ")[1]
        for shown in re.findall(r"(\w+)\(([^)]*)\)", first):
            name, given = shown
            factory = getattr(jaxnn, name)
            in_call = {part.split("=")[0].strip() for part in given.split(",") if part}
            missing = [arg for arg in inspect.signature(factory).parameters
                       if arg not in in_call and f"`{arg}" not in arguments
                       and f"`{arg}" not in first]
            assert not missing, (name, missing)
            checked += 1
    assert checked >= 25
