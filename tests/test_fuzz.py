"""Generated bad input through the real entry point (`jaxnn.cli.main`, in-process).

The property, for every generated case: the command ends with exit status 0, 1 (a diverged
run) or 2 (one line naming what is wrong), never a traceback, and an error changes no file
that already existed under the output directory. Fixed seed (derandomized) and a small
budget, so that CI runs the same cases every time.
"""

import hashlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnn import cli, config, rundir

TINY = """
[model]
hidden = [4]
[data]
name = "digits"
limit = 200
[training]
epochs = 1
batch_size = 16
progress = false
[output]
plots = false
checkpoint = true
"""

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Every config key but output.dir (a generated directory would land anywhere), and some
# that do not exist. Integers stay small: a valid huge epoch count would just train long.
KEYS = [f"{section}.{key}" for section, values in config.to_dict(config.from_dict({})).items()
        if section != "sweep" for key in values if f"{section}.{key}" != "output.dir"] + [
    "model.nope", "nosection.key", "training", "", "model..hidden", "sweep.grid"]
VALUES = st.one_of(
    st.integers(-3, 40).map(str), st.floats(allow_nan=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "true", "[]", "[0]", "[-1, 4]", "{}", "'relu'",
                     "'sgd'", "'float64'", "\"hinge\"", "[{type = 'Dense'}]", "1e309", "=",
                     "'", "[[1]]", "{a = 1}"]),
    st.text(max_size=12))
OVERRIDES = st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), VALUES),
                     min_size=1, max_size=3)


def digest(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name != rundir.LOCK:
                path = os.path.join(root, name)
                out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """An output directory holding one finished run, which no failed command may touch."""
    base = tmp_path_factory.mktemp("fuzz")
    path = base / "tiny.toml"
    path.write_text(TINY + f'dir = "{base / "runs"}"\n')
    assert cli.main(["train", str(path), "--workdir", str(base / "runs" / "done")]) == 0
    return base, str(path)


def run_cli(capsys, argv, output_dir):
    before = digest(output_dir)
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err, (argv, err)
    if status == 2:
        assert err.startswith("jaxnn: error: ") and err.count("\n") == 1, (argv, err)
        after = digest(output_dir)
        assert {p: h for p, h in after.items() if p in before} == before, argv
    return status


@FUZZ
@given(overrides=OVERRIDES)
def test_generated_overrides(output, capsys, overrides):
    base, path = output
    argv = ["train", path]
    for override in overrides:
        argv += ["--set", override]
    run_cli(capsys, argv, base / "runs")


@FUZZ
@given(overrides=OVERRIDES)
def test_generated_overrides_on_resume(output, capsys, overrides):
    base, _ = output
    argv = ["train", "--resume", str(base / "runs" / "done")]
    for override in overrides:
        argv += ["--set", override]
    run_cli(capsys, argv, base / "runs")


@FUZZ
@given(data=st.binary(max_size=400), kind=st.sampled_from(["npz", "csv"]))
def test_generated_data_files(output, capsys, tmp_path, data, kind):
    base, _ = output
    path = tmp_path / f"data.{kind}"
    path.write_bytes(data)
    cfg = tmp_path / "data.toml"
    cfg.write_text(TINY.replace('name = "digits"\nlimit = 200',
                                f'name = "{kind}"\npath = "{path}"'))
    run_cli(capsys, ["train", str(cfg), "--workdir", str(base / "runs" / "data")], base / "runs")


@FUZZ
@given(rows=st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True, width=32),
                               st.floats(allow_nan=True, width=32),
                               st.integers(-3, 10**6)), min_size=0, max_size=30))
def test_generated_csv_values(output, capsys, tmp_path, rows):
    base, _ = output
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n" + "".join(f"{a},{b},{y}\n" for a, b, y in rows))
    cfg = tmp_path / "data.toml"
    cfg.write_text(TINY.replace('name = "digits"\nlimit = 200', f'name = "csv"\npath = "{path}"')
                   .replace("batch_size = 16", "batch_size = 4"))
    run_cli(capsys, ["train", str(cfg), "--workdir", str(base / "runs" / "csv")], base / "runs")


@FUZZ
@given(position=st.floats(0, 1), junk=st.binary(min_size=1, max_size=64),
       cut=st.booleans())
def test_generated_checkpoint_bytes(output, capsys, tmp_path, position, junk, cut):
    base, _ = output
    done = base / "runs" / "done"
    original = (done / "checkpoint.npz").read_bytes()
    at = int(position * (len(original) - 1))
    damaged = original[:at] if cut else original[:at] + junk + original[at + len(junk):]
    copy = base / "runs" / "copy"
    os.makedirs(copy, exist_ok=True)
    for name in os.listdir(done):
        if name != rundir.LOCK:
            (copy / name).write_bytes((done / name).read_bytes())
    (copy / "checkpoint.npz").write_bytes(damaged)
    run_cli(capsys, ["train", "--resume", str(copy)], base / "runs")
    np.testing.assert_equal((done / "checkpoint.npz").read_bytes(), original)
