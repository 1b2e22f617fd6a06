"""Nothing lost, nothing mixed, no traceback: run directories, locks, resume guards, data
validation, cut JSON-lines files, diverged runs and checkpoint ranges (issue 19's
reproductions, each asserting the new behaviour)."""

import errno
import gzip
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxnn import cli, jsonl, run, rundir, sweep
from jaxnn import config as config_lib
from jaxnn.train import default_hparams, make_train

TINY = """
[model]
hidden = [8]
[data]
name = "digits"
limit = 400
[training]
epochs = 2
batch_size = 16
progress = false
[output]
plots = false
"""


def write(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def digest(directory):
    """Every file's bytes under ``directory`` (the lock file aside)."""
    return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(directory)) if name != rundir.LOCK}


def fails(capsys, argv, *fragments):
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("jaxnn: error: ") and "Traceback" not in err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# --- 1. run directories are unique and locked ------------------------------------------------

def test_directories_made_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261129-120000")
    made = [rundir.create(tmp_path, "run") for _ in range(3)]
    assert [os.path.basename(m) for m in made] == [
        "run-20261129-120000", "run-20261129-120000-2", "run-20261129-120000-3"]


def test_a_locked_directory_names_its_holder_and_a_dead_holder_blocks_nobody(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxnn import rundir\n"
         "with rundir.locked(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunError, match=f"in use by another jaxnn process "
                                                  f"\\(PID {holder.pid}\\)"):
            with rundir.locked(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with rundir.locked(tmp_path):  # the OS released the killed holder's lock
        assert open(tmp_path / rundir.LOCK).read().strip() == str(os.getpid())


def _jaxnn(*args):
    # Ctrl-C reaches the child even when this suite runs as a shell's background job: that
    # starts with SIGINT ignored, and a child inherits an ignored signal (a handled one is
    # reset to the default at exec, where Python installs its KeyboardInterrupt).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "jaxnn.cli", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_two_trainings_started_together_get_two_directories(tmp_path):
    config = write(tmp_path, TINY)
    out = tmp_path / "runs"
    processes = [_jaxnn("train", config, "--set", f"output.dir='{out}'", "--set",
                        f"optimizer.learning_rate={lr}") for lr in (0.1, 0.001)]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    runs = sorted(os.listdir(out))
    assert len(runs) == 2
    for name in runs:
        assert len(run.read_metrics(str(out / name))) == 2  # nothing interleaved


def test_concurrent_resumes_of_one_run_one_proceeds_the_other_exits_2(tmp_path):
    epochs = 1200
    config = write(tmp_path, TINY.replace("epochs = 2", f"epochs = {epochs}\nchunk_epochs = 1"))
    workdir = tmp_path / "run"
    assert cli.main(["train", config, "--workdir", str(workdir)]) == 0
    state = checkpoint_state(workdir)
    # Rewind to epoch 1 (keeping the rest) so that the resume has the other epochs to train.
    rows = run.read_metrics(str(workdir))
    jsonl.rewrite(workdir / run.METRICS, rows[:1])
    _rewind(workdir, state, epoch=1)
    first = _jaxnn("train", "--resume", str(workdir))
    deadline = time.monotonic() + 300
    while (workdir / rundir.LOCK).read_text().strip() != str(first.pid):  # it holds the lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = _jaxnn("train", "--resume", str(workdir))  # while the first trains
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 2], results
    assert "in use by another jaxnn process" in results[1][1]
    assert "Traceback" not in results[1][1]
    assert [row["epoch"] for row in run.read_metrics(str(workdir))] == \
        list(range(1, epochs + 1))  # no epoch twice


def checkpoint_state(workdir):
    with np.load(workdir / run.CHECKPOINT) as archive:
        return {name: archive[name] for name in archive.files}


def _rewind(workdir, arrays, *, epoch):
    """The checkpoint with its epoch (and best epoch) set to ``epoch``, bytes otherwise kept."""
    paths = [str(p) for p in arrays["__paths__"]]
    changed = dict(arrays)
    for index, path in enumerate(paths):
        if path.endswith(".epoch") or path in ("['epoch']", "epoch"):
            changed[f"leaf_{index}"] = np.asarray(epoch, arrays[f"leaf_{index}"].dtype)
    np.savez(workdir / run.CHECKPOINT, **changed)
    return paths


# --- 2, 3, 8. resume validates everything before writing anything --------------------------

@pytest.fixture
def finished_run(tmp_path):
    workdir = tmp_path / "run"
    assert cli.main(["train", write(tmp_path, TINY), "--workdir", str(workdir)]) == 0
    return workdir


def test_a_refused_resume_leaves_the_run_as_it_was(finished_run, capsys):
    before = digest(finished_run)
    fails(capsys, ["train", "--resume", str(finished_run), "--set", "model.hidden=[32]"],
          "model.hidden", "start a new run")
    fails(capsys, ["train", "--resume", str(finished_run), "--set", "training.epochs=50"],
          "training.epochs")
    assert digest(finished_run) == before
    assert cli.main(["train", "--resume", str(finished_run)]) == 0  # still resumable
    assert cli.main(["train", "--resume", str(finished_run), "--set",
                     "training.progress=false"]) == 0  # what does not change training
    # The stored config edited by hand: checked against the one its checkpoint was saved with.
    stored = finished_run / run.CONFIG
    text = stored.read_text()
    for edit in (("epochs = 2", "epochs = 50"), ('activation = "relu"', 'activation = "tanh"')):
        assert edit[0] in text
        stored.write_text(text.replace(*edit))
        before = digest(finished_run)
        fails(capsys, ["train", "--resume", str(finished_run)],
              f"{edit[1].split(' =')[0]} is", "but the run was trained with")
        assert digest(finished_run) == before
    stored.write_text(text)
    assert cli.main(["train", "--resume", str(finished_run)]) == 0


def test_a_checkpoint_epoch_out_of_range_is_refused(finished_run, capsys):
    paths = _rewind(finished_run, checkpoint_state(finished_run), epoch=-50)
    assert any("epoch" in p for p in paths)
    before = digest(finished_run)
    fails(capsys, ["train", "--resume", str(finished_run)], "epoch -50 is outside [0, 2]")
    assert digest(finished_run) == before


def test_sweep_resume_cannot_change_what_its_trials_train(tmp_path, capsys):
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    capsys.readouterr()
    before = digest(workdir)
    fails(capsys, ["sweep", "--resume", str(workdir), "--set", "training.epochs=1"],
          "training.epochs")
    # --plan of a resume makes the same checks (it printed a plan the resume refuses).
    fails(capsys, ["sweep", "--resume", str(workdir), "--plan", "--set", "training.epochs=1"],
          "training.epochs")
    fails(capsys, ["sweep", config, "--resume", str(workdir), "--plan"],
          "give either a config or --resume")
    assert digest(workdir) == before
    # The stored sweep.toml edited by hand: checked against the config its study keeps.
    stored = workdir / "sweep.toml"
    text = stored.read_text()
    stored.write_text(text.replace("epochs = 2", "epochs = 3"))
    before = digest(workdir)
    fails(capsys, ["sweep", "--resume", str(workdir)], "training.epochs is 3",
          "the sweep was started with 2")
    assert digest(workdir) == before
    stored.write_text(text)
    assert cli.main(["sweep", "--resume", str(workdir)]) == 0
    # Its study is no worker's: it has no report of its own.
    fails(capsys, ["sweep", "--report", "--storage", str(workdir / "study.journal"), "--study",
                   "sweep"], "was not made by jaxnn sweep --study")


# --- 6. a cut results.jsonl is repaired, not appended to ---------------------------------------

def test_a_hand_edited_grid_is_named_on_resume(tmp_path, capsys):
    """It said results.jsonl "was written by a different sweep", not what was edited."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    stored = workdir / sweep.SWEEP_CONFIG
    stored.write_text(stored.read_text().replace("0.1]", "0.2]"))
    before = digest(workdir)
    capsys.readouterr()
    fails(capsys, ["sweep", "--resume", str(workdir)],
          "trial 1 was trained with {'learning_rate': 0.1}, and "
          f"{stored} gives it {{'learning_rate': 0.2}} (an edited config")
    assert digest(workdir) == before


def test_a_cut_results_file_is_repaired_on_resume(tmp_path, capsys):
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1, 0.3]}\n"
                   "trials_per_chunk = 1\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    path = workdir / "results.jsonl"
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1]) + lines[1][: len(lines[1]) // 2])  # cut mid-line
    for _ in range(2):
        assert cli.main(["sweep", "--resume", str(workdir)]) == 0
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert sorted(row["trial"] for row in rows) == [0, 1, 2]
    assert [json.loads(line)["trial"] for line in path.read_bytes().splitlines()[:1]] == [
        json.loads(lines[0])["trial"]]


def test_a_study_journal_cut_mid_line_is_repaired_on_resume(tmp_path):
    """A full disk cut the study's journal mid-record. Optuna skips such a line when it
    reads, but appends after it: the resumed sweep's first record was glued to the fragment
    and lost, and Optuna failed on it (an AttributeError traceback)."""
    import optuna

    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1, 0.3]}\n"
                   "trials_per_chunk = 1\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    journal = workdir / sweep.search.STUDY_FILE
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert cli.main(["sweep", "--resume", str(workdir)]) == 0
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="sweep", storage=storage).trials
    values = {row["trial"]: row["val_accuracy"] for row in sweep.read_results(str(workdir))}
    assert sorted(t.user_attrs.get("trial", t.number) for t in trials
                  if t.state == optuna.trial.TrialState.COMPLETE) == [0, 1, 2]
    assert sorted(t.value for t in trials if t.value is not None) == sorted(values.values())


def test_a_report_that_fails_while_writing_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """``best.toml``, ``table.txt``, ``results.csv`` and ``config.toml`` are replaced whole:
    a report that failed half-way (here while rendering the best config) left ``best.toml``
    holding its comment line alone, which ``jaxnn train`` read as the default config."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    before = digest(workdir)

    def interrupted(descriptor):
        raise KeyboardInterrupt  # as a Ctrl-C while a file is written, its bytes not all out

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.report.write(*_report_inputs(workdir))
    monkeypatch.undo()
    assert digest(workdir) == before
    assert not [name for name in os.listdir(workdir) if ".tmp" in name]
    # Written through a symlink, as open(path, "w") writes: the link stays a link.
    (tmp_path / "kept.txt").write_text("old")
    os.symlink(tmp_path / "kept.txt", tmp_path / "link.txt")
    rundir.write_text(tmp_path / "link.txt", "new")
    assert os.path.islink(tmp_path / "link.txt") and (tmp_path / "kept.txt").read_text() == "new"


def _report_inputs(workdir):
    config = config_lib.load(workdir / sweep.SWEEP_CONFIG)
    plan = sweep.make_plan(config, run.prepare(config))
    return config, plan, sweep.read_results(str(workdir)), str(workdir)


def test_set_values_that_are_not_utf8_are_refused_before_a_directory_is_made(tmp_path,
                                                                              capsys):
    """Bytes the terminal could not decode reached config.toml's writer, which failed after
    opening it: a traceback, and an empty config.toml that ``--resume`` read as the default
    config."""
    output = os.fsdecode(os.fsencode(str(tmp_path)) + b"/out\xff")
    fails(capsys, ["train", write(tmp_path, TINY), "--set", f'output.dir="{output}"'],
          "--set", "is not valid UTF-8")
    assert os.listdir(tmp_path) == ["tiny.toml"]


def test_jsonl_reader_drops_a_partial_line_and_repair_truncates_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert jsonl.read(path) == [{"a": 1}, {"a": 2}]
    assert jsonl.repair(path) == [{"a": 1}, {"a": 2}]
    jsonl.append(path, [{"a": 3}])
    assert jsonl.read(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert jsonl.read(tmp_path / "missing.jsonl") == []
    # A damaged line before the last is no kill's: an error naming it, the file as it was.
    damaged = '{"a": 1}\nGARBAGE\n{"a": 3}\n'
    path.write_text(damaged)
    for reader in (jsonl.read, jsonl.repair):
        with pytest.raises(jsonl.DamagedFile, match=r"rows.jsonl, line 2: .*'GARBAGE'"):
            reader(path)
    assert path.read_text() == damaged


def test_a_resume_refuses_damaged_metrics_and_changes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", write(tmp_path, TINY), "--workdir", str(workdir), "--set",
                     "training.epochs=4", "--set", "training.chunk_epochs=1"]) == 0
    path = workdir / run.METRICS
    lines = path.read_text().splitlines(keepends=True)
    for damaged, said in ((["GARBAGE\n", *lines[1:]], "line 1: not a row"),
                          (lines[:1] + lines[2:], "each of epochs 1 to 4 once"),  # one lost
                          ([], "each of epochs 1 to 4 once")):
        path.write_text("".join(damaged))
        assert cli.main(["train", "--resume", str(workdir)]) == 2
        assert said in capsys.readouterr().err
        assert path.read_text() == "".join(damaged)
    path.write_text("".join(lines) + lines[-1][:9])  # a kill's partial line is dropped
    assert cli.main(["train", "--resume", str(workdir)]) == 0
    assert path.read_text() == "".join(lines)


# --- 4, 5, 10. data is validated before compiling, with the file and row named ----------------

def _npz(tmp_path, x, y, name="data.npz"):
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return str(path)


def _data_config(tmp_path, name, path, extra=""):
    return write(tmp_path, TINY.replace('name = "digits"\nlimit = 400',
                                        f'name = "{name}"\npath = "{path}"\n{extra}'),
                 name="data.toml")


def _features(n=40):
    return np.random.default_rng(0).normal(size=(n, 3))


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda x, y: y.__setitem__(7, 1e9), ["label 1000000000 at row 7", "classes"]),
    (lambda x, y: y.__setitem__(5, 2.5), ["label 2.5 at row 5"]),
    (lambda x, y: y.__setitem__(3, -1), ["label -1.0 at row 3"]),
    (lambda x, y: y.__setitem__(slice(None), np.arange(40) % 3), []),  # integers: trains
    (lambda x, y: y.__setitem__(slice(None), 0), ["every label is 0", "at least 2"]),
    (lambda x, y: y.__setitem__(9, 1e19), ["label 10000000000000000000 at row 9", "classes"]),
    ("strings", ["array 'y' holds <U1 values; labels and targets are real numbers"]),
    (lambda x, y: x.__setitem__((11, 2), np.nan), ["features at row 11 holds nan"]),
    (lambda x, y: x.__setitem__((4, 0), np.inf), ["features at row 4 holds inf"]),
    (lambda x, y: x.__setitem__((5, 1), 1e39), ["features (in float32) at row 5 holds inf"]),
])
def test_bad_npz_values_are_refused_naming_the_row(tmp_path, capsys, change, fragments):
    x, y = _features(), (np.arange(40) % 3).astype(np.float64)
    if change == "strings":
        y = np.array(["a", "b"] * 20)
    else:
        change(x, y)
    path = _npz(tmp_path, x, y)
    argv = ["train", _data_config(tmp_path, "npz", path), "--workdir", str(tmp_path / "run")]
    if not fragments:  # the control: the same file with good values trains
        assert cli.main(argv) == 0
        return
    fails(capsys, argv, path, *fragments)
    assert not (tmp_path / "run").exists() or not digest(tmp_path / "run")


def test_a_csv_label_beyond_the_others_or_the_declared_count_is_refused(tmp_path, capsys):
    rows = ["a,b,label"] + [f"{i},{i % 5},{i % 3}" for i in range(30)]
    rows[12] = "1,2,99"
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    fails(capsys, ["train", _data_config(tmp_path, "csv", path), "--workdir",
                   str(tmp_path / "run")], "label 99 at line 13", "data.num_classes")
    fails(capsys, ["train", _data_config(tmp_path, "csv", path, "num_classes = 3"),
                   "--workdir", str(tmp_path / "run")], "label 99 at line 13", "3 classes")


def test_csv_errors_name_the_file_line_and_a_byte_order_mark_is_dropped(tmp_path, capsys):
    """A CSV's bad value is at its line in the file (the header is line 1; "row 5" counted
    data rows from 0, skipping blank ones), and Excel's "CSV UTF-8" byte-order mark no
    longer hides a leading label column ("no column 'label'; columns are ['\\ufefflabel'")."""
    rows = ["label,a,b"] + [f"{i % 3},{i},{i % 5}" for i in range(30)]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    assert cli.main(["train", _data_config(tmp_path, "csv", path), "--workdir",
                     str(tmp_path / "run")]) == 0, capsys.readouterr().err
    rows[8], rows[20] = "1,nan,2", ""  # line 9; a blank line before line 22
    rows[21] = "1.5,3,4"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    fails(capsys, ["train", _data_config(tmp_path, "csv", path), "--workdir",
                   str(tmp_path / "run2")], "label 1.5 at line 22")
    rows[21] = "1,3,4"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    fails(capsys, ["train", _data_config(tmp_path, "csv", path), "--workdir",
                   str(tmp_path / "run2")], "features at line 9 holds nan")


def test_idx_labels_outside_the_ten_classes_are_refused(tmp_path, capsys):
    def idx(name, array, code):
        header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
            f">{array.ndim}I", *array.shape)
        (tmp_path / name).write_bytes(header + array.astype(np.uint8).tobytes())

    images = np.zeros((20, 4, 4))
    labels = np.arange(20) % 10
    labels[6] = 200
    for prefix in ("train", "t10k"):
        idx(f"{prefix}-images-idx3-ubyte", images, 0x08)
        idx(f"{prefix}-labels-idx1-ubyte", labels, 0x08)
    fails(capsys, ["train", _data_config(tmp_path, "mnist", tmp_path), "--workdir",
                   str(tmp_path / "run")], "train labels", "label 200 at row 6")


@pytest.mark.parametrize("case", ["truncated", "empty", "two_d_labels", "header_only",
                                  "no_test_split", "binary_csv", "a_directory",
                                  "string_targets", "lengths_apart_under_a_limit",
                                  "damaged_gzip", "test_images_of_another_size"])
def test_unreadable_or_empty_data_is_one_line(tmp_path, capsys, case):
    """(The last five were tracebacks, or trained: x of 40 rows and y of 30 under
    data.limit = 20.)"""
    extra = ""
    if case in ("damaged_gzip", "test_images_of_another_size"):
        name, path = "mnist", tmp_path / "mnist"
        path.mkdir()
        for prefix, side in (("train", 4), ("t10k", 4 if case == "damaged_gzip" else 5)):
            for kind, array, code in (("images-idx3", np.zeros((20, side, side)), 3),
                                      ("labels-idx1", np.arange(20) % 10, 1)):
                raw = struct.pack(">BBBB", 0, 0, 0x08, code) + struct.pack(
                    f">{code}I", *array.shape) + array.astype(np.uint8).tobytes()
                (path / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(raw))
        if case == "damaged_gzip":
            damaged = bytearray((path / "train-images-idx3-ubyte.gz").read_bytes())
            damaged[10:12] = b"\xff\xff"
            (path / "train-images-idx3-ubyte.gz").write_bytes(bytes(damaged))
        fragment = {"damaged_gzip": "cannot read",
                    "test_images_of_another_size": "t10k images are (5, 5), the train "
                                                   "images (4, 4)"}[case]
    elif case == "a_directory":
        name, path, fragment = "csv", tmp_path, "cannot read"
    elif case in ("header_only", "no_test_split", "binary_csv"):
        path = tmp_path / "data.csv"
        path.write_text({"header_only": "a,b,label\n", "no_test_split": "a,b,label\n1,2,0\n3,4,1\n",
                         "binary_csv": ""}[case])
        if case == "binary_csv":
            path.write_bytes(b"\x80\x81,label\n")
        name, fragment = "csv", {"header_only": "no examples", "binary_csv": "not a UTF-8 CSV",
                                 "no_test_split": "the test split is empty"}[case]
    else:
        name = "npz"
        x, y = _features(), np.arange(40) % 3
        if case == "empty":
            x, y = x[:0], y[:0]
        if case == "string_targets":
            y = np.array(["a"] * 40)
            extra = 'task = "regression"\n'
        if case == "lengths_apart_under_a_limit":
            y, extra = y[:30], "limit = 20\n"
        if case == "two_d_labels":
            y = np.stack([y, y], axis=1)
        path = _npz(tmp_path, x, y)
        if case == "truncated":
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
        fragment = {"truncated": "cannot read npz", "empty": "no examples",
                    "two_d_labels": "shape (n,); got shape (40, 2)",
                    "string_targets": "array 'y' holds <U1 values; labels and targets are "
                                      "real numbers",
                    "lengths_apart_under_a_limit": "40 examples but 30 labels"}[case]
    fails(capsys, ["train", _data_config(tmp_path, name, path, extra), "--workdir",
                   str(tmp_path / "run")], str(path), fragment)


# --- 7. a diverged run keeps and reports its last finite state --------------------------------

def test_a_diverged_run_keeps_its_last_finite_epoch(tmp_path, capsys):
    config = write(tmp_path, TINY.replace("epochs = 2", "epochs = 6"))
    workdir = tmp_path / "run"
    # Plain SGD at this rate grows the loss to ~1e36 within two epochs, then overflows (at
    # step 40 of 17 per epoch, measured).
    status = cli.main(["train", config, "--workdir", str(workdir), "--set",
                       "optimizer.name='sgd'", "--set", "optimizer.learning_rate=5.0",
                       "--set", "output.plots=true"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_DIVERGED, out
    summary = json.loads((workdir / run.SUMMARY).read_text())
    kept = summary["epochs_run"]
    rows = run.read_metrics(str(workdir))
    assert [r["epoch"] for r in rows] == list(range(1, kept + 2))
    assert all(r["nonfinite_step"] < 0 for r in rows[:-1]) and rows[-1]["nonfinite_step"] >= 0
    last = float(summary["message"].split("last finite loss ")[1].split(" ")[0])
    assert np.isfinite(last)
    assert f"test metrics are of the last finite epoch, {kept}" in summary["message"] or (
        kept == 0 and "initial parameters" in summary["message"])
    assert kept >= 1, "pick a rate that diverges after the first epoch"
    with np.load(workdir / run.CHECKPOINT) as archive:
        paths = [str(p) for p in archive["__paths__"]]
        epoch = next(int(archive[f"leaf_{i}"]) for i, p in enumerate(paths)
                     if p.endswith(".epoch") or p.endswith("[4]"))
    assert epoch == kept
    assert np.isfinite(summary["test_loss"])
    assert strict_json(workdir / run.METRICS)[-1]["train_loss"] is None  # not NaN: strict
    strict_json(workdir / run.SUMMARY)
    # Its loss figure shows the finite epochs (the diverged one a gap; it was left out).
    assert [os.path.basename(p) for p in summary["plots"]] == ["loss.png", "accuracy.png"]


def strict_json(path):
    """The JSON values of ``path``'s lines (or its one document), refusing NaN and infinities
    (Python's reader takes them; ``jq`` and browsers do not)."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")
    text = open(path).read()
    if str(path).endswith(".jsonl"):
        return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    return json.loads(text, parse_constant=refuse)


def test_a_regression_writes_strict_json(tmp_path):
    """metrics.jsonl held ``"train_accuracy": NaN`` on every line of a regression."""
    config = write(tmp_path, TINY.replace('name = "digits"', 'name = "regression"')
                   .replace("[data]", '[data]\nnum_examples = 60').replace(
                       "hidden = [8]", 'hidden = [8]\nloss = "mse"').replace("limit = 400\n", ""))
    assert cli.main(["train", config, "--workdir", str(tmp_path / "run")]) == 0
    rows = strict_json(tmp_path / "run" / run.METRICS)
    assert [row["train_accuracy"] for row in rows] == [None, None]
    assert all(np.isfinite(row["train_loss"]) for row in rows)
    strict_json(tmp_path / "run" / run.SUMMARY)


def test_config_round_trip_keeps_num_classes(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((8, 2)), y=np.arange(8) % 4)
    config = config_lib.from_dict({"data": {"name": "npz", "path": str(path), "num_classes": 4}})
    again = config_lib.load(write(tmp_path, config_lib.dumps(config)))
    assert again.data.num_classes == 4



# --- 9. every trial's errors come before anything trains; plans that cannot fit are refused ---

def test_a_bad_trial_is_refused_before_any_trial_trains(tmp_path, capsys):
    config = write(tmp_path, TINY + "[sweep]\ngrid = {batch_size = [16, 100000]}\n")
    workdir = tmp_path / "sweep"
    fails(capsys, ["sweep", config, "--workdir", str(workdir)], "sweep: trial {'batch_size': "
          "100000}: training.batch_size: 100000 exceeds the")
    assert not workdir.exists()


def test_a_plan_beyond_device_memory_is_refused(tmp_path, capsys):
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.1, 0.2]}\n")
    fails(capsys, ["sweep", config, "--plan", "--set", "training.epochs=100000000"],
          "minibatch order of 100000000 epochs", "budget")


def test_a_run_beyond_device_memory_or_its_counters_is_refused(tmp_path, capsys):
    """A width no memory holds (it hung allocating), and more steps than int32 counts."""
    config = write(tmp_path, TINY)
    workdir = tmp_path / "run"
    fails(capsys, ["train", config, "--workdir", str(workdir), "--set",
                   "model.hidden=[1000000000]"], "model: 75,000,000,010 params need ~",
          "GiB budget")
    fails(capsys, ["train", config, "--workdir", str(workdir), "--set",
                   "training.epochs=100000000000000000000"], "training.epochs: "
          "100000000000000000000 epochs of", "more steps than a run counts")
    # The schedule's epochs, as steps, overflowed JAX's int32 (a traceback).
    for flags, key in ((["schedule={name = \"step\", boundaries = [1e300], scales = [0.5]}"],
                        "schedule.boundaries: 1e+300 epochs of"),
                       (["schedule={name = \"exponential\", decay_epochs = 1e307}"],
                        "schedule.decay_epochs: 1e+307 epochs of")):
        fails(capsys, ["train", config, "--workdir", str(workdir), "--set", *flags], key,
              "more steps than a run counts")
    # Boundaries apart in epochs, one step as steps: optax kept one of their scales.
    fails(capsys, ["train", config, "--workdir", str(workdir), "--set",
                   "schedule={name = \"step\", boundaries = [1.0, 1.01], scales = [0.5, 0.1]}"],
          "schedule.boundaries: [1.0, 1.01] epochs of", "fall on the same steps")
    assert not workdir.exists()


# --- 10. Ctrl-C stops cleanly -------------------------------------------------------------------

def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    config = write(tmp_path, TINY.replace("epochs = 2", "epochs = 2000\nchunk_epochs = 1"))
    workdir = tmp_path / "run"
    process = _jaxnn("train", config, "--workdir", str(workdir))
    deadline = time.monotonic() + 120
    while len(run.read_metrics(str(workdir))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"jaxnn train --resume {workdir}" in err
    epochs = [row["epoch"] for row in run.read_metrics(str(workdir))]
    assert epochs == list(range(1, len(epochs) + 1))
    saved = run._restore(config_lib.load(workdir / run.CONFIG), str(workdir),
                         *_template(workdir))[0]
    assert int(saved.epoch) in (len(epochs), len(epochs) - 1)


def test_a_run_stopped_before_its_first_epoch_resumes_from_the_start(tmp_path, monkeypatch):
    """Ctrl-C while compiling leaves the config alone; the message's ``--resume`` starts the
    run anew (it said "nothing to resume"), as an uninterrupted run."""
    config = write(tmp_path, TINY)
    workdir = tmp_path / "run"
    monkeypatch.setattr(run, "_finish", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(rundir.Interrupted, match=f"jaxnn train --resume {workdir}"):
        with rundir.guarded(str(workdir), "train", created=True):
            run.train_and_evaluate(config_lib.load(config), workdir)
    assert sorted(os.listdir(workdir)) == [".lock", run.CONFIG, rundir.DATA_DIGEST]
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(workdir)]) == 0
    assert cli.main(["train", config, "--workdir", str(tmp_path / "whole")]) == 0
    assert run.read_metrics(str(workdir)) == run.read_metrics(str(tmp_path / "whole"))


def test_ctrl_c_without_checkpoints_does_not_offer_a_resume(tmp_path, monkeypatch, capsys):
    """With output.checkpoint = false there is nothing to resume from: the message said to
    run `--resume`, which then failed with "nothing to resume"."""
    config = write(tmp_path, TINY.replace("plots = false", "plots = false\ncheckpoint = false"))
    workdir = tmp_path / "run"
    monkeypatch.setattr(run, "_finish", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["train", config, "--workdir", str(workdir)]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err == (f"jaxnn: interrupted; {workdir} keeps what was finished, and no checkpoint "
                   "to resume from (output.checkpoint = false)\n")
    # A run checkpointed before, resumed with checkpoints off, still has the earlier one.
    monkeypatch.undo()
    assert cli.main(["train", write(tmp_path, TINY, "on.toml"), "--workdir",
                     str(tmp_path / "on")]) == 0
    monkeypatch.setattr(run, "_finish", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["train", "--resume", str(tmp_path / "on"), "--set",
                     "output.checkpoint=false"]) == cli.EXIT_INTERRUPTED
    assert f"continue with jaxnn train --resume {tmp_path / 'on'}" in capsys.readouterr().err


@pytest.mark.parametrize("reader", ["head -1", "true"])
@pytest.mark.parametrize("buffered", [True, False])
def test_output_cut_short_by_its_reader_is_no_traceback(tmp_path, reader, buffered):
    """`jaxnn summary CONFIG | head -1` ended in a BrokenPipeError traceback, unbuffered;
    buffered, in "Exception ignored ... BrokenPipeError" at the interpreter's exit flush."""
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "resnet_digits.toml")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    result = subprocess.run(f"{sys.executable} -c 'from jaxnn import cli; cli.console_main()' "
                            f"summary {config} | {reader}", shell=True, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.stdout.count("\n") == (1 if reader == "head -1" else 0)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, \
        result.stderr


# The `jaxnn` command, its work interrupted: the message, then the process ends at once.
INTERRUPTED_COMMAND = """
import atexit, sys
from jaxnn import cli
atexit.register(lambda: print("teardown ran"))
def interrupted(argv=None, *, owns_process=False):
    print("jaxnn: interrupted before anything was written", file=sys.stderr)
    return cli.EXIT_INTERRUPTED
cli.main = interrupted
cli.console_main()
"""


def test_an_interrupted_command_ends_without_the_interpreters_teardown():
    """Ctrl-C can land while XLA compiles on its own threads, and the interpreter's teardown
    then segfaulted (3 of 4 tries at 2.4 s into a run): an interrupted command ends at once,
    its output flushed."""
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_COMMAND], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 130
    assert result.stderr == "jaxnn: interrupted before anything was written\n"
    assert "teardown ran" not in result.stdout


def _template(workdir):
    """A fresh training state and early-stopping record of the run's config (to restore into),
    and its data."""
    cfg = config_lib.load(workdir / run.CONFIG)
    dataset = run.prepare(cfg)
    trainer = make_train(cfg, dataset)
    state = trainer.init(jax.random.key(0), default_hparams(cfg, trainer.dtype))
    return state, {"val_loss": float("inf"), "epoch": 0, "stopped": 0}, dataset


def _interrupt_on_call(monkeypatch, module, name, when):
    """``module.name`` raising KeyboardInterrupt (a Ctrl-C) on the calls ``when`` accepts."""
    real = getattr(module, name)

    def interrupted(*args, **kwargs):
        if when(*args):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


@pytest.mark.parametrize("moment", ["writing sweep.toml", "writing results.jsonl"])
def test_a_sweep_stopped_while_starting_can_be_resumed_or_started_again(
        tmp_path, monkeypatch, capsys, moment):
    """Ctrl-C after the study was made but before sweep.toml (or results.jsonl) was written
    left a directory that neither --resume (which the message offered) nor a new sweep
    would take."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    target = "sweep.toml" if moment == "writing sweep.toml" else "results.jsonl"
    _interrupt_on_call(monkeypatch, rundir, "write_text",
                       lambda path, *rest: str(path).endswith(target))
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    monkeypatch.undo()
    if target == "sweep.toml":  # nothing written: the same command starts it again
        assert "--resume" not in err
        assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    else:
        assert f"continue with jaxnn sweep --resume {workdir}" in err, err
        assert cli.main(["sweep", "--resume", str(workdir)]) == 0
    assert cli.main(["sweep", config, "--workdir", str(tmp_path / "whole")]) == 0
    assert [_without_times(row) for row in jsonl.read(workdir / "results.jsonl")] == [
        _without_times(row) for row in jsonl.read(tmp_path / "whole" / "results.jsonl")]


def _without_times(row):
    return {key: value for key, value in row.items() if not key.endswith("_s")}


def _stopped_after_epoch_1(tmp_path, config, monkeypatch):
    """``config`` (chunks of one epoch) trained in ``tmp_path/run`` and stopped by a Ctrl-C
    as its second epoch's metrics are written: its checkpoint holds epoch 1."""
    workdir = tmp_path / "run"
    calls = []
    _interrupt_on_call(monkeypatch, jsonl, "append",
                       lambda path, rows: calls.append(path) or len(calls) == 2)
    assert cli.main(["train", config, "--workdir", str(workdir)]) == cli.EXIT_INTERRUPTED
    monkeypatch.undo()
    return workdir


def test_a_run_resumed_without_checkpoints_leaves_its_checkpoint_at_its_end(tmp_path,
                                                                             monkeypatch):
    """Resumed with output.checkpoint = false, a run finished with its checkpoint still at the
    epoch it resumed from: a later --resume of the finished run trained those epochs again
    (and, stopped, left its summary saying "completed" beside fewer epochs of metrics)."""
    config = write(tmp_path, TINY.replace("progress = false", "progress = false\n"
                                          "chunk_epochs = 1"))
    workdir = _stopped_after_epoch_1(tmp_path, config, monkeypatch)
    assert int(run._restore(config_lib.load(workdir / run.CONFIG), str(workdir),
                            *_template(workdir))[0].epoch) == 1
    assert cli.main(["train", "--resume", str(workdir), "--set",
                     "output.checkpoint=false"]) == 0
    saved = run._restore(config_lib.load(workdir / run.CONFIG), str(workdir),
                         *_template(workdir))[0]
    assert int(saved.epoch) == 2
    assert cli.main(["train", config, "--workdir", str(tmp_path / "whole")]) == 0
    whole = run._restore(config_lib.load(workdir / run.CONFIG), str(tmp_path / "whole"),
                         *_template(workdir))[0]
    chex_equal = jax.tree.map(np.array_equal, saved.params, whole.params)
    assert all(jax.tree.leaves(chex_equal))
    before = digest(workdir)
    assert cli.main(["train", "--resume", str(workdir)]) == 0
    assert digest(workdir)[run.METRICS] == before[run.METRICS]


def test_a_directory_that_cannot_be_written_is_one_error(tmp_path, capsys):
    """A read-only run directory (its lock file cannot be made) was a traceback, exit 1."""
    workdir = tmp_path / "run"
    (workdir / rundir.LOCK).mkdir(parents=True)  # as root, a mode cannot make it read-only
    fails(capsys, ["train", write(tmp_path, TINY), "--workdir", str(workdir)],
          f"{workdir}: cannot write in it (Is a directory)")


def test_a_sweep_refuses_a_stopped_runs_directory(tmp_path, capsys):
    """A run stopped before its first epoch keeps its config.toml alone: a sweep took the
    directory, after which the run's --resume was refused (it held a sweep)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / run.CONFIG).write_text(config_lib.dumps(config_lib.load(write(tmp_path, TINY))))
    sweep_config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.1]}\n", "s.toml")
    fails(capsys, ["sweep", sweep_config, "--workdir", str(workdir)],
          f"{workdir} holds config.toml (a training run's config")
    assert sorted(os.listdir(workdir)) == [rundir.LOCK, run.CONFIG]
    assert cli.main(["train", "--resume", str(workdir)]) == 0
    # A sweep's own config kept in its directory under that name is no run's.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / run.CONFIG).write_text(open(sweep_config).read())
    assert cli.main(["sweep", str(mine / run.CONFIG), "--workdir", str(mine)]) == 0


def test_a_stored_config_with_a_key_its_data_do_not_read_still_resumes(tmp_path):
    """An earlier jaxnn ignored ``data.num_classes`` for the digits; the run directories it
    wrote keep the key, and refusing it made them impossible to resume (the advice to
    leave it out could not be followed there)."""
    path = tmp_path / run.CONFIG
    path.write_text(config_lib.dumps(config_lib.load(write(tmp_path, TINY)))
                    .replace("num_classes = 0", "num_classes = 10"))
    assert config_lib.load_for_resume(path).data.num_classes == 10
    with pytest.raises(config_lib.ConfigError, match=r"data\.num_classes: 10 is not read"):
        cli.load_config(str(path), [])  # a new run of it is refused


def test_a_run_resumes_with_another_chunk_size(tmp_path, monkeypatch):
    """``--set training.chunk_epochs=3`` on a resume was refused as a change of what was
    trained; the chunk is how many epochs one compiled call runs, nothing more."""
    config = write(tmp_path, TINY.replace("epochs = 2", "epochs = 4\nchunk_epochs = 1\n"
                                          "precision = \"float64\""))
    workdir = _stopped_after_epoch_1(tmp_path, config, monkeypatch)
    assert cli.main(["train", "--resume", str(workdir), "--set",
                     "training.chunk_epochs=3"]) == 0
    assert cli.main(["train", config, "--workdir", str(tmp_path / "whole")]) == 0
    rows, whole = (run.read_metrics(str(path)) for path in (workdir, tmp_path / "whole"))
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    for row, want in zip(rows, whole, strict=True):
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write's: no file named


def test_a_full_disk_is_one_error_naming_the_file_and_keeps_what_was_written(
        tmp_path, monkeypatch, capsys):
    """A checkpoint, a rows file or a figure that the disk had no room for was a traceback
    whose error named no file, and a figure was left empty (matplotlib wrote it in place)."""
    workdir = tmp_path / "run"
    monkeypatch.setattr(np, "savez", _disk_full)  # the checkpoint's write
    fails(capsys, ["train", write(tmp_path, TINY), "--workdir", str(workdir)],
          f"{workdir / run.CHECKPOINT}: No space left on device; stopped here")
    monkeypatch.undo()
    assert sorted(os.listdir(workdir)) == [rundir.LOCK, run.CONFIG, rundir.DATA_DIGEST,
                                           run.METRICS]
    assert len(run.read_metrics(str(workdir))) == 2

    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left") as error:
        jsonl.append(tmp_path / "rows.jsonl", [{"a": 1}])
    assert error.value.filename == str(tmp_path / "rows.jsonl")
    monkeypatch.undo()

    config = write(tmp_path, TINY.replace("plots = false", "plots = true")
                   + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    sweep_dir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(sweep_dir)]) == 0
    before = digest(sweep_dir)
    assert any(name.endswith(".png") for name in before)
    replace = os.replace

    def figures_do_not_fit(source, target):
        if str(target).endswith(".png"):
            _disk_full()
        replace(source, target)

    monkeypatch.setattr(os, "replace", figures_do_not_fit)
    with pytest.raises(OSError, match="No space left") as error:
        sweep.report.write(*_report_inputs(sweep_dir))
    monkeypatch.undo()
    assert str(error.value.filename).startswith(str(sweep_dir))
    assert str(error.value.filename).endswith(".png")
    assert digest(sweep_dir) == before
    assert not [name for name in os.listdir(sweep_dir) if ".tmp" in name]


def _idx_directory(path, images, labels=None, test_images=None):
    """MNIST-layout files of float32 images (IDX type 0x0D) and uint8 labels."""
    path.mkdir()
    labels = np.arange(len(images)) % 10 if labels is None else labels
    test_images = images if test_images is None else test_images
    for prefix, x in (("train", images), ("t10k", test_images)):
        for kind, array, code in (("images-idx3", x.astype(">f4"), 0x0D),
                                  ("labels-idx1", labels[:len(x)].astype(np.uint8), 0x08)):
            (path / f"{prefix}-{kind}-ubyte").write_bytes(
                struct.pack(">BBBB", 0, 0, code, array.ndim)
                + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.mark.parametrize("case", [
    "idx_nan", "idx_empty_test", "idx_path_a_file", "regression_target_past_float32",
    "standardizing_overflows", "probability_loss_on_real_targets", "npy_file", "csv_as_npz",
    "pickled_npz", "mnist_test_fraction", "regression_num_classes"])
def test_data_the_run_cannot_use_is_one_line_before_training(tmp_path, capsys, case):
    """Each of these trained (NaN in a float IDX file: a run whose validation loss was null;
    targets past float32's range: a diverged run; features whose standardization overflowed:
    inputs all 0 or NaN; a cross-entropy on real targets: a negative test loss; a key the
    data set ignores), ended in a traceback (a .npy file, IDX files with no examples), or
    named the wrong cause (a CSV or pickled arrays given as npz)."""
    x, y = _features(), np.arange(40) % 3
    images = np.random.default_rng(0).random((20, 4, 4))
    extra, name = "", "npz"
    if case.startswith("idx") or case == "mnist_test_fraction":
        name, path = "mnist", tmp_path / "mnist"
        if case == "idx_nan":
            images[13, 2, 1] = np.nan
        if case == "idx_path_a_file":
            path.write_text("")
        else:
            _idx_directory(path, images, test_images=images[:0] if "empty" in case else None)
        extra = "test_fraction = 0.5\n" if case == "mnist_test_fraction" else ""
        fragment = {"idx_nan": "train images at row 13 holds nan",
                    "idx_empty_test": "the t10k files hold no examples",
                    "idx_path_a_file": "a file; MNIST-layout data are a directory",
                    "mnist_test_fraction": "data.test_fraction: 0.5 is not read"}[case]
    elif case == "npy_file":
        path = tmp_path / "x.npy"
        np.save(path, x)
        fragment = "one array (a .npy file), not an npz archive"
    elif case == "csv_as_npz":
        path = tmp_path / "data.csv"
        path.write_text("a,label\n1,0\n")
        fragment = "not an npz archive"
    elif case == "pickled_npz":
        path = tmp_path / "objects.npz"
        np.savez(path, x=x, y=np.array([None] * 40, dtype=object))
        fragment = "array 'y' holds Python objects"
    else:
        if case == "regression_target_past_float32":
            y, extra = x[:, 0].copy(), 'task = "regression"\n'
            y[3] = 1e39
            fragment = "target 'y' (in float32) at row 3 holds inf"
        elif case == "standardizing_overflows":
            x[:, 1] = np.where(np.arange(40) % 2, 1e300, -1e300)  # std: inf, inputs all 0
            fragment = "feature 1 cannot be standardized"
        elif case == "probability_loss_on_real_targets":
            y, extra = x @ np.array([1.0, 2.0, 3.0]), 'task = "regression"\n'
            fragment = "sigmoid_binary_cross_entropy needs targets in [0, 1]"
        else:
            y, extra = x[:, 0].copy(), 'task = "regression"\nnum_classes = 3\n'
            fragment = "data.num_classes: 3 is not read by a regression"
        path = _npz(tmp_path, x, y)
    config = _data_config(tmp_path, name, path, extra)
    overrides = []
    if case in ("regression_target_past_float32", "standardizing_overflows",
                "regression_num_classes"):
        overrides = (["--set", 'training.precision="float64"'] if "overflows" in case
                     else ["--set", 'model.loss="mse"'])
    if case == "probability_loss_on_real_targets":
        overrides = ["--set", 'model.loss="sigmoid_binary_cross_entropy"']
    fails(capsys, ["train", config, "--workdir", str(tmp_path / "run"), *overrides], fragment)
    assert not (tmp_path / "run").exists()


# --- Resumes of damaged or changed records (a CLI review, fourteenth session) ------------------

def npz_sweep(tmp_path, data):
    """TINY on an npz file at ``data``: a run's config and a sweep's."""
    text = TINY.replace('name = "digits"\nlimit = 400', f'name = "npz"\npath = "{data}"')
    return (write(tmp_path, text, "run.toml"),
            write(tmp_path, text + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n",
                  "sweep.toml"))


def test_a_resume_on_other_data_is_refused(tmp_path, capsys):
    """A data file replaced between a run (or a sweep) and its --resume trained on with the
    other data: one run's metrics, one sweep's table mixed the two, exit 0 (and data of
    another shape was blamed on the checkpoint)."""
    data, rng = tmp_path / "d.npz", np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(120, 5)), y=np.arange(120) % 3)
    began = data.read_bytes()
    configs = dict(zip(("train", "sweep"), npz_sweep(tmp_path, data), strict=True))
    for command, config in configs.items():
        assert cli.main([command, config, "--workdir", str(tmp_path / command)]) == 0
    for other in (rng.normal(size=(120, 5)), rng.normal(size=(120, 6))):
        np.savez(data, x=other, y=np.arange(120) % 3)
        for command in configs:
            workdir = tmp_path / command
            before = digest(workdir)
            capsys.readouterr()
            what = "run" if command == "train" else "sweep"
            fails(capsys, [command, "--resume", str(workdir)], f"data: npz ({data})",
                  f"is not the data this {what} began on")
            assert digest(workdir) == before
    data.write_bytes(began)
    for command in configs:
        assert cli.main([command, "--resume", str(tmp_path / command)]) == 0


def test_a_changed_layer_is_named_before_the_checkpoints_shapes(finished_run, capsys):
    """It said "checkpoint.npz: leaf ['state'].params[0]['b'] has shape (8,)": the
    edited key goes first."""
    stored = finished_run / run.CONFIG
    stored.write_text(stored.read_text().replace("hidden = [8]", "hidden = [5]"))
    fails(capsys, ["train", "--resume", str(finished_run)], "model.hidden[0] is 5, but the run "
          "was trained with 8")


def rewrite_note(path, note):
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["__note__"] = np.array(note)
    np.savez(path, **arrays)


@pytest.mark.parametrize("note", ["this is [[ not toml", 7, "[training]\nepochs = -5\n"])
def test_a_damaged_checkpoint_note_is_refused_naming_the_checkpoint(finished_run, capsys, note):
    """A note that was no TOML, or no text, ended in a traceback (exit 1); one whose values
    are refused blamed config.toml, which is intact."""
    path = finished_run / run.CHECKPOINT
    rewrite_note(path, note)
    before = digest(finished_run)
    err = fails(capsys, ["train", "--resume", str(finished_run)], f"{path}: the config it "
                "keeps cannot be read", "the file is damaged")
    assert "config.toml" not in err
    assert digest(finished_run) == before


@pytest.mark.parametrize("damage", ["not TOML", "not text", "an unknown record"])
def test_a_damaged_study_journal_is_refused_naming_it(tmp_path, capsys, damage):
    """An edited study.journal ended in TOMLDecodeError, AttributeError or Optuna's
    AssertionError ("Should not reach."), exit 1."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    journal = workdir / "study.journal"
    lines = journal.read_text().splitlines()
    if damage == "an unknown record":
        lines.insert(1, json.dumps({"op_code": 99}))
    else:
        at = next(i for i, line in enumerate(lines) if "jaxnn_config" in line)
        record = json.loads(lines[at])
        record["user_attr"]["jaxnn_config"] = "not [[ toml" if damage == "not TOML" else 12345
        lines[at] = json.dumps(record)
    journal.write_text("\n".join(lines) + "\n")
    before = digest(workdir)
    capsys.readouterr()
    fails(capsys, ["sweep", "--resume", str(workdir)], str(journal), "the file is damaged")
    assert digest(workdir) == before


def test_a_repeated_results_row_is_refused_on_resume(tmp_path, capsys):
    """A copied line was accepted and copied on: 3 rows in results.jsonl and results.csv for
    2 trials, exit 0."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    path = workdir / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[0]]))
    before = digest(workdir)
    capsys.readouterr()
    fails(capsys, ["sweep", "--resume", str(workdir)], f"{path}: line 3 records trial "
          f"{json.loads(lines[0])['trial']} again")
    assert digest(workdir) == before


def test_a_removed_study_journal_is_named(tmp_path, capsys):
    """It said a sweep "with [sweep] storage resumes only in a directory of the name it
    began in", of a sweep with no storage in the directory it began in."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.01, 0.1]}\n")
    workdir = tmp_path / "sweep"
    assert cli.main(["sweep", config, "--workdir", str(workdir)]) == 0
    (workdir / "study.journal").unlink()
    capsys.readouterr()
    fails(capsys, ["sweep", "--resume", str(workdir)], "study.journal holds no study, though "
          "the sweep recorded finished trials")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_a_study_in_memory_is_refused(tmp_path, capsys, url):
    """An in-memory SQLite study was accepted: a stopped sweep could not be resumed (its
    study gone, the error blaming the directory's name), a worker shared nothing."""
    config = write(tmp_path, TINY + f"[sweep]\ngrid = {{learning_rate = [0.01, 0.1]}}\n"
                   f"storage = {url!r}\n")
    workdir = tmp_path / "sweep"
    fails(capsys, ["sweep", config, "--workdir", str(workdir)], "sweep.storage",
          "a database in memory keeps nothing")
    assert not workdir.exists()
    fails(capsys, ["sweep", write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.1]}\n",
                                  "w.toml"), "--storage", url, "--study", "s"],
          f"--storage {url!r}", "a database in memory keeps nothing")


@pytest.mark.parametrize(("setting", "key", "where"), [
    ("optimizer.learning_rate=1e300", "optimizer.learning_rate", "beyond"),
    ("optimizer.learning_rate=1e-50", "optimizer.learning_rate", "below"),
    ("schedule.final_fraction=1e-50", "schedule.final_fraction", "below"),
    ('model.layers=[{type = "BatchNorm", epsilon = 1e-60}, {type = "Dense", features = 10}]',
     "model.layers[0].epsilon", "below"),
    ("sweep.grid={learning_rate = [0.1, 1e300]}", "optimizer.learning_rate", "beyond"),
])
def test_a_float_the_precision_cannot_hold_is_refused(tmp_path, capsys, setting, key, where):
    """A learning rate of 1e300 became inf in float32 (numpy's overflow warnings, a compile,
    then "diverged", exit 1); 1e-50 became 0 (a run that learnt nothing, exit 0); an epsilon
    of 1e-60, a division by 0. In float64 they are numbers like any other."""
    command = "sweep" if setting.startswith("sweep") else "train"
    settings = [setting, *(["model.hidden=[]"] if setting.startswith("model.layers") else [])]
    workdir = tmp_path / "out"
    fails(capsys, [command, write(tmp_path, TINY), *(f for s in settings for f in ("--set", s)),
                   "--workdir", str(workdir)],
          f"{key}: ", f"is {where} what float32 (training.precision) holds")
    assert not workdir.exists()
    if command == "train":
        run.check_precision(config_lib.load(write(tmp_path, TINY), [
            *settings, "training.precision='float64'"]))


@pytest.mark.parametrize(("grid", "extra", "key"), [
    ("{learning_rate = [%s], momentum = [%s], weight_decay = [%s]}" % ((", ".join(
        str(0.01 * (i + 1)) for i in range(100)),) * 3), [], "sweep.grid"),
    ("{}", ["sweep.random={learning_rate = {distribution = 'uniform', low = 0.01, high = 0.1}}",
            "sweep.count=1000000000"], "sweep.count"),
])
def test_a_sweep_of_more_trials_than_any_runs_is_refused_at_once(tmp_path, capsys, grid, extra,
                                                                 key):
    """A 100 x 100 x 100 grid (or a billion random draws) planned for minutes, holding
    gigabytes, without a word."""
    started = time.monotonic()
    fails(capsys, ["sweep", write(tmp_path, TINY), "--set", f"sweep.grid={grid}",
                   *(f for s in extra for f in ("--set", s)), "--plan"],
          f"{key}: ", "trials, more than a sweep runs (100,000)")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("settings", "fragment"), [
    (["optimizer.name='sgd'", "optimizer.momentum=0.5"],
     "optimizer.momentum: 0.5 is not read by 'sgd' (only by momentum, nesterov, rmsprop)"),
    (["schedule.boundaries=[5.0]", "schedule.scales=[0.1]"],
     "schedule.boundaries: [5.0] is not read by 'cosine' (only by step)"),
    (["optimizer.name='adam'", "optimizer.decay=0.5"], "optimizer.decay: 0.5 is not read by"),
])
def test_a_run_refuses_optimizer_and_schedule_keys_it_does_not_read(tmp_path, capsys, settings,
                                                                    fragment):
    """They trained as if left out, exit 0."""
    fails(capsys, ["train", write(tmp_path, TINY), *(f for s in settings for f in ("--set", s)),
                   "--workdir", str(tmp_path / "out")], fragment)
    assert not (tmp_path / "out").exists()


def test_best_toml_of_a_sweep_over_optimizers_leaves_out_what_the_winner_did_not_read(
        tmp_path, capsys):
    """A swept momentum beside a swept optimizer: an sgd winner's best.toml kept its
    momentum, which a new run now refuses."""
    config = write(tmp_path, TINY + "[sweep]\ngrid = {optimizer = ['sgd', 'momentum'], "
                   "momentum = [0.5]}\n")
    assert cli.main(["sweep", config, "--workdir", str(tmp_path / "sweep")]) == 0
    results = sweep.read_results(str(tmp_path / "sweep"))
    plan = sweep.make_plan(config_lib.load(config), run.prepare(config_lib.load(config)))
    sgd = next(row for row in results if row["values"]["optimizer"] == "sgd")
    best = sweep.best_config(plan, [{**sgd, "status": "completed"}])
    assert (best.optimizer.name, best.optimizer.momentum) == ("sgd", 0.9)  # the default
    (tmp_path / "best.toml").write_text(config_lib.dumps(best))
    assert cli.main(["train", str(tmp_path / "best.toml"), "--workdir",
                     str(tmp_path / "run")]) == 0


def test_small_inputs_that_named_the_wrong_thing(tmp_path, capsys):
    """0-wide MNIST images blamed the first layer's input shape; a billion declared classes
    blamed the model's params; a results file given as --storage said only 'op_code'; a
    config starting with a UTF-8 byte-order mark was "not valid TOML" (it now reads)."""
    _idx_directory(tmp_path / "mn0", np.zeros((20, 0, 5)))
    fails(capsys, ["train", _data_config(tmp_path, "mnist", tmp_path / "mn0"), "--workdir",
                   str(tmp_path / "run")], "mn0: the examples have no features")
    data = tmp_path / "d.npz"
    np.savez(data, x=_features(), y=np.arange(40) % 3)
    fails(capsys, ["train", npz_sweep(tmp_path, data)[0], "--set", "data.num_classes=1000000000",
                   "--workdir", str(tmp_path / "run")],
          "data.num_classes: 1000000000 is more than the 100,000 classes")
    rows = tmp_path / "results.jsonl"
    rows.write_text('{"trial": 0, "status": "completed"}\n')
    sweep_config = write(tmp_path, TINY + "[sweep]\ngrid = {learning_rate = [0.1]}\n", "s.toml")
    fails(capsys, ["sweep", sweep_config, "--storage", str(rows), "--study", "s"],
          f"--storage {rows}", "not an Optuna journal, or a damaged one")
    assert rows.read_text() == '{"trial": 0, "status": "completed"}\n'
    marked = tmp_path / "bom.toml"
    marked.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    assert config_lib.dumps(config_lib.load(marked)) == config_lib.dumps(
        config_lib.load(write(tmp_path, TINY)))
