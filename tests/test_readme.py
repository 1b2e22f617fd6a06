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
    for name in ("results.jsonl", "results.csv", "best.toml"):
        assert (workdir / name).stat().st_size > 0, name
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
