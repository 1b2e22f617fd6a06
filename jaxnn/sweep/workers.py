"""Workers on one shared Optuna study: ``jaxnn sweep CONFIG --storage URL --study NAME``.

Any number of worker processes, on one machine or many, train one sweep together through a
study in a shared storage -- a relational database (``postgresql+psycopg://...``,
``sqlite:///...``, any URL SQLAlchemy opens with its driver installed) or Optuna's journal
file on a shared file system (any other path).

The study holds the whole sweep: its config (user attribute ``"jaxnn_config"``) and its trial
budget -- the grid's trials, or ``[sweep] trials`` -- as one WAITING trial per budget slot
(user attribute ``"trial"``: the slot), enqueued by the worker that creates the study. A
worker claims up to ``[sweep] batch`` waiting slots at a time with the storage's atomic
WAITING -> RUNNING change (what Optuna's ``enqueue_trial`` relies on), so no slot is claimed
twice; it asks the sampler for their values (a grid slot's are fixed), trains them vmapped
like any batch, and tells the study each trial's outcome with its results row (user
attribute ``"row"``). Pruning rungs compare the trials of one worker's batch.

While a worker trains, a thread records its claimed trials' heartbeats. Before claiming, a
worker fails the trials whose heartbeat is older than the grace period -- a killed worker's
-- (`optuna.storages.fail_stale_trials`), and Optuna's retry callback enqueues each again
with the same slot and values; a worker stops when no slot is waiting or running. Optuna's
relational storage has heartbeats; for the journal file, which has none, `LeasedJournal`
keeps them in a system attribute.

``jaxnn sweep --report --storage URL --study NAME`` writes the study's table, CSV,
``best.toml`` and plots (`write_report`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from jaxnn import config as config_lib
from jaxnn import jsonl, rundir
from jaxnn.config import Config, ConfigError
from jaxnn.sweep import report, search
from jaxnn.sweep.execute import MAX_REFUSALS, RESULTS, SWEEP_CONFIG, Sweep
from jaxnn.sweep.plan import make_plan
from jaxnn.sweep.spec import make_trial

BUDGET_ATTR = "jaxnn_budget"  # set last by the study's creator: the study is ready
HEARTBEAT_ATTR = "jaxnn_heartbeat"
INTERVAL_ATTR = "jaxnn_heartbeat_interval_s"  # the study's workers' one heartbeat interval
HEARTBEAT_S = 10
GRACE_BEATS = 3  # a trial is stale after this many heartbeat intervals without one
MAX_RETRIES = 3  # a slot whose worker died this often is left FAIL (it may be what kills them)
READY_TIMEOUT_S = 120
# In a report's directory: which study it reports, so that only that study's report
# replaces it.
REPORT_OF = "report_of.json"


def _optuna():
    return search._quiet()


def _retry_callback():
    optuna = _optuna()
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback  # Optuna < 4.9
    return retry(max_retry=MAX_RETRIES)


@functools.cache
def _leased_journal():
    """The class of Optuna's journal-file storage with heartbeats (built on first use, as
    Optuna is imported lazily)."""
    optuna = _optuna()
    from optuna.storages._heartbeat import BaseHeartbeat

    journal = optuna.storages.journal

    class LeasedJournal(journal.JournalStorage, BaseHeartbeat):
        """A journal file whose running trials have heartbeats, so `fail_stale_trials` works
        on it as on a relational storage. A beat is the trial's system attribute
        ``HEARTBEAT_ATTR`` (seconds since the epoch: workers on several machines need
        synchronized clocks); a running trial is stale when neither its last beat nor its
        start is within ``grace`` seconds."""

        def __init__(self, path: str, interval: int, grace: int, callback):
            super().__init__(journal.JournalFileBackend(path))
            self.jaxnn_lease = (interval, grace, callback)

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            grace, now, stale = self.jaxnn_lease[1], time.time(), []
            for trial in self.get_all_trials(study_id, deepcopy=False,
                                             states=(optuna.trial.TrialState.RUNNING,)):
                started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
                if now - max(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0), started) > grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int:
            return self.jaxnn_lease[0]

        def get_heartbeat_stale_trial_callback(self):
            return self.jaxnn_lease[2]

        get_failed_trial_callback = get_heartbeat_stale_trial_callback  # Optuna < 4.9

    return LeasedJournal


def open_storage(url: str, heartbeat: int | None = HEARTBEAT_S):
    """The shared storage at ``url`` (a database URL, else a journal file path; a worker's
    journal or SQLite file has its directory made if missing), with heartbeats every
    ``heartbeat`` seconds (None: none, to read it).

    Raises:
      RunError: the storage cannot be opened (a missing driver, an unreachable server, a
        journal file to read that does not exist).
    """
    optuna = _optuna()
    if search.in_memory(url):
        raise rundir.RunError(f"--storage {url!r}: {search.IN_MEMORY}")
    try:
        if "://" not in url:
            path = search.journal_path(url)
            if heartbeat is None:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"no journal file {url}")
                journal = optuna.storages.journal
                return journal.JournalStorage(journal.JournalFileBackend(path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return _leased_journal()(path, heartbeat, GRACE_BEATS * heartbeat, _retry_callback())
        if heartbeat is None:
            _check_database_file(url)  # else reading it would make an empty database
            storage = _opened_together(lambda: optuna.storages.RDBStorage(url))
        else:
            if (path := _database_file(url)) is not None:  # its directory made, as a journal's
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback"
                        in inspect.signature(optuna.storages.RDBStorage).parameters
                        else "failed_trial_callback")  # Optuna < 4.9
            storage = _opened_together(lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=GRACE_BEATS * heartbeat,
                **{callback: _retry_callback()}))
        if storage.engine.dialect.name == "sqlite" and storage.engine.url.database not in (
                None, "", ":memory:"):  # a file other processes share (not one to drop)
            _lock_as_transactions_begin(storage.engine)
        return storage
    except Exception as error:  # the database's driver, OSError, or the database's errors
        raise rundir.RunError(f"--storage {url}: {search.storage_failure(error, url)}") from None


def _opened_together(open_database: Callable[[], Any], attempts: int = 5):
    """``open_database()``, tried again where another worker was creating the same new
    database at that moment.

    Optuna's `RDBStorage` creates its tables and records their schema version as it opens
    a new database; of two workers started together on one, one failed (``table studies
    already exists``, or the version's UNIQUE constraint). Tried again, it finds them made.
    """
    import sqlalchemy.exc

    for attempt in range(attempts - 1):
        try:
            return open_database()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as error:
            if not _made_meanwhile(error):  # a bad password, an unreachable server: at once
                raise
            time.sleep(0.05 * 2 ** attempt)
    return open_database()


# How SQLite, PostgreSQL and MySQL say that another connection made (or is making) a table or
# row at the same moment.
_MADE_MEANWHILE = ("already exists", "unique constraint", "duplicate", "database is locked")


def _made_meanwhile(error: Exception) -> bool:
    """Whether ``error`` says another worker was creating the database at that moment."""
    text = str(error).lower()
    return any(words in text for words in _MADE_MEANWHILE)


def _database_file(url: str) -> str | None:
    """The SQLite file ``url`` names, or None (another database, or one in memory)."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not parsed.database.startswith("file:"):
        return parsed.database
    return None


def _check_database_file(url: str) -> None:
    """Raises FileNotFoundError where ``url`` names an SQLite file that does not exist."""
    path = _database_file(url)
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"no database file {path}")


def _lock_as_transactions_begin(engine) -> None:
    """SQLite ignores ``SELECT ... FOR UPDATE``, with which Optuna moves a waiting trial to
    running, so two workers could both claim one slot (three processes claiming at once
    took 6 of 32 slots twice). Here every transaction takes the database's write lock as it
    begins (``BEGIN IMMEDIATE``, SQLAlchemy's recipe for SQLite), so claims are one at a
    time."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def driver_leaves_transactions_alone(dbapi_connection, unused_record) -> None:
        del unused_record
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened before these listeners


def _create(storage, name: str, config: Config, plan):
    """Creates the study with its config and one WAITING trial per budget slot; None when
    another worker created it first."""
    optuna = _optuna()
    direction = "maximize" if plan.metric.endswith("accuracy") else "minimize"
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                    sampler=_sampler(plan))
    except optuna.exceptions.DuplicatedStudyError:
        return None
    study.set_user_attr(search.CONFIG_ATTR, config_lib.dumps(config))
    if _interval(storage) is not None:
        study.set_user_attr(INTERVAL_ATTR, _interval(storage))
    budget = len(plan.trials) if plan.search == "grid" else plan.spec["trials"]
    for slot in range(budget):
        values = plan.trials[slot].values if plan.search == "grid" else {}
        study.enqueue_trial(search.to_study(values, plan.space), user_attrs={"trial": slot})
    study.set_user_attr(BUDGET_ATTR, budget)
    return study


def _sampler(plan):
    # Unseeded: workers given the same seed would ask for the same values.
    return search.sampler(plan.search, None)


def join(storage, name: str, config: Config, plan):
    """The shared study ``name``, created with the sweep's budget by the first worker.

    Raises:
      RunError: the study was created for another config, or never became ready.
    """
    optuna = _optuna()
    study = _create(storage, name, config, plan)
    if study is not None:
        return study
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(plan))
    if search.DIRECTORY_ATTR in study.user_attrs:
        where = study.user_attrs[search.DIRECTORY_ATTR]
        raise rundir.RunError(f"study {name!r} is the study of the sweep in {where}, not a "
                              f"workers' study: continue it with jaxnn sweep --resume {where}, "
                              "or give the workers another --study name")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while BUDGET_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise rundir.RunError(f"study {name!r} has no trial budget: its creator died "
                                  "while enqueueing it; delete it or use another name")
        time.sleep(0.2)
    # Workers may differ only where a resume may (output, progress: `config.RESUMABLE`).
    named = f"study {name!r}"
    change = config_lib.resume_change(search.study_config(study, named, named), config)
    if change is not None:
        key, theirs, mine = change
        raise rundir.RunError(f"{config.source}: {key} = {mine!r}, but study {name!r} was "
                              f"created with {theirs!r}; every worker of a study runs the "
                              "same sweep")
    theirs, mine = study.user_attrs.get(INTERVAL_ATTR), _interval(storage)
    if None not in (theirs, mine) and theirs != mine:  # each would judge the other's stale
        raise rundir.RunError(f"--heartbeat {mine}: study {name!r} was created by a worker "
                              f"beating every {theirs} s, and every worker of a study beats "
                              f"alike (a trial is stale after {GRACE_BEATS} missed beats): "
                              f"give --heartbeat {theirs}")
    return study


def _interval(storage) -> int | None:
    """The heartbeat interval of a worker's ``storage`` (None: opened to read)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def worker_name() -> str:
    """``host:pid``, recorded on the trials this process claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Claim(NamedTuple):
    """A budget slot this worker holds: the study trial and the jaxnn trial it trains."""

    trial_id: int
    slot: int
    values: dict


def _suggest(trial, name: str, dist) -> Any:
    """The trial's value for a search-space entry: fixed (a grid slot or a retry), or the
    sampler's."""
    optuna_dist = search.distribution(dist)
    if dist.kind == "choice":
        return trial.suggest_categorical(name, optuna_dist.choices)
    if dist.kind == "int":
        return trial.suggest_int(name, optuna_dist.low, optuna_dist.high, log=dist.log)
    return trial.suggest_float(name, optuna_dist.low, optuna_dist.high, log=dist.log)


def claim(study, storage, space, count: int) -> list[Claim]:
    """Fails stale trials (and enqueues their retries), then claims up to ``count`` waiting
    slots, oldest first, recording a first heartbeat for each."""
    optuna = _optuna()
    optuna.storages.fail_stale_trials(study)
    claimed = []
    for waiting in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if len(claimed) == count:
            break
        try:
            if not storage.set_trial_state_values(waiting._trial_id,
                                                  optuna.trial.TrialState.RUNNING):
                continue  # another worker claimed it first
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.record_heartbeat(waiting._trial_id)
        trial = optuna.trial.Trial(study, waiting._trial_id)
        values = {name: _suggest(trial, name, dist) for name, dist in space.items()}
        trial.set_user_attr("worker", worker_name())
        claimed.append(Claim(waiting._trial_id, waiting.user_attrs["trial"],
                             search.from_study(values, space)))
    return claimed


@contextlib.contextmanager
def beating(storage, held: dict[int, Claim], interval: float) -> Iterator[None]:
    """Records the heartbeat of every trial in ``held`` (which shrinks as trials are told)
    every ``interval`` seconds, in a thread, for the ``with`` block. A beat that fails (a
    busy database) is retried at the next interval."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            for claimed in tuple(held.values()):  # a copy: the worker pops told trials
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(claimed.trial_id)

    thread = threading.Thread(target=beat, name="jaxnn heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _busy(study) -> bool:
    """Whether any trial is still waiting or running (a worker's, alive or not yet stale)."""
    optuna = _optuna()
    states = optuna.trial.TrialState
    return bool(study.get_trials(deepcopy=False, states=(states.WAITING, states.RUNNING)))


def _batch_plan(study, sweep: Sweep, config: Config, dataset, batch: list[Claim],
                held: dict[int, Claim], refusals: collections.Counter):
    """The plan of the trials of ``batch`` the data and the network can take (None: none).
    A claim the sampler filled with values no trial can take (as in `Sweep.ask_batch`) is
    failed with the reason (user attribute ``"refused"``), given back to ``held``, and its
    slot enqueued afresh for the sampler; a slot refused `MAX_REFUSALS` times in a row ends
    this worker (exit 2), as does an error of the batch as a whole."""
    trials = [make_trial(c.slot, c.values, config) for c in batch]
    try:
        return make_plan(config, dataset, trials)
    except ConfigError:
        refused = sweep.refused(trials)  # each trial checked alone: only when one fails
        if not refused:
            raise
    for claimed in batch:
        if claimed.slot not in refused:
            continue
        reason = refused[claimed.slot]
        refusals[claimed.slot] += 1
        if refusals[claimed.slot] >= MAX_REFUSALS:
            raise ConfigError(config.source, "sweep", f"{reason} ({MAX_REFUSALS} draws in a "
                              "row refused for one trial)")
        search.refuse(study, claimed.trial_id, reason)
        study.enqueue_trial({}, user_attrs={"trial": claimed.slot})
        held.pop(claimed.slot)
        sweep.bar.write(f"jaxnn: refused {reason}; recorded as failed in the study, its slot "
                        "given back to the sampler", file=sys.stderr)
    trials = [t for t in trials if t.index not in refused]
    return make_plan(config, dataset, trials) if trials else None


def _release(study, storage, held: dict[int, Claim]) -> None:
    """Gives back the trials of an interrupted worker at once: failed, and enqueued again."""
    optuna = _optuna()
    for claimed in held.values():
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(claimed.trial_id, optuna.trial.TrialState.FAIL):
                _retry_callback()(study, storage.get_trial(claimed.trial_id))
    held.clear()


def run_worker(config: Config, url: str, name: str, *, heartbeat: int = HEARTBEAT_S,
               dataset=None) -> dict[str, Any]:
    """Works on the shared study ``name`` at ``url`` until no trial is waiting or running.

    Returns:
      ``{"trained": rows this worker told, "done": finished slots, "budget": n,
      "wall_time_s": ...}``.

    Raises:
      ConfigError: for a bad sweep or config, before anything is compiled.
      RunError: the study belongs to another config.
    """
    from jaxnn import run

    started = time.perf_counter()
    run.enable_precision(config)
    dataset = dataset if dataset is not None else run.prepare(config)
    plan = make_plan(config, dataset)
    storage = open_storage(url, heartbeat)
    study = join(storage, name, config, plan)
    held: dict[int, Claim] = {}
    trained: list[dict] = []

    def record(rows: list[dict]) -> None:
        optuna = _optuna()
        for row in rows:
            try:
                search.tell(study, held[row["trial"]].trial_id, row, plan.metric,
                            {"row": row})
                trained.append(row)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # judged stale meanwhile: its retry reports it
            del held[row["trial"]]  # once told: Ctrl-C in `tell` gives the trial back

    sweep = Sweep(config, plan, dataset, {}, record)
    refusals: collections.Counter = collections.Counter()
    try:
        while True:
            batch = claim(study, storage, plan.space,
                          plan.spec.get("batch", min(len(plan.trials), 16)))
            if not batch:
                if not _busy(study):
                    break
                time.sleep(min(heartbeat, 1))  # others train: wait for them, or their retries
                continue
            held.update({c.slot: c for c in batch})
            with beating(storage, held, heartbeat):
                batch_plan = _batch_plan(study, sweep, config, dataset, batch, held, refusals)
                if batch_plan is not None:
                    sweep.train_batch(batch_plan)
    finally:
        sweep.bar.close()
        _release(study, storage, held)
    return {"trained": trained, "done": len(final_rows(study)),
            "budget": study.user_attrs[BUDGET_ATTR],
            "wall_time_s": time.perf_counter() - started}


def final_rows(study) -> list[dict]:
    """The study's results rows, one per finished slot, by slot: each slot's latest trial
    whose state matches its row (a stale trial failed under a worker is not one)."""
    rows = {}
    for trial in study.get_trials(deepcopy=False):
        row = trial.user_attrs.get("row")
        if row is not None and trial.state == search.trial_state(row["status"]):
            rows[row["trial"]] = row
    return [rows[slot] for slot in sorted(rows)]


def _check_report_directory(workdir: str, url: str, name: str) -> None:
    """Refuses ``workdir`` (locked, so existing) when it holds anything but an earlier
    report of the same study (a run, a sweep, another study's report), which would be
    overwritten or mixed with this one."""
    if not set(os.listdir(workdir)) - {rundir.LOCK}:
        return
    try:
        with open(os.path.join(workdir, REPORT_OF)) as handle:
            same = json.load(handle) == {"storage": url, "study": name}
    except (OSError, ValueError):
        same = False
    if not same:
        held = rundir.holds(workdir)
        what = "another study's report" if held == rundir.REPORT else held or "other files"
        raise rundir.RunError(f"{workdir} holds {what}; report into a new directory")


def write_report(url: str, name: str, workdir: str | None = None) -> dict[str, Any]:
    """Writes the shared study's report to ``workdir`` (None: a new directory under the
    config's output directory): ``results.jsonl`` (its rows), ``sweep.toml``, the table,
    CSV, ``best.toml`` and plots.

    Raises:
      RunError: no study ``name`` at ``url``.
    """
    from jaxnn import run

    optuna = _optuna()
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, None))
    except KeyError:
        raise rundir.RunError(f"{url} holds no study named {name!r}") from None
    if BUDGET_ATTR not in study.user_attrs:  # a sweep directory's own study has no budget
        raise rundir.RunError(f"study {name!r} in {url} was not made by jaxnn sweep --study")
    config = search.study_config(study, f"study {name!r}", f"study {name!r}")
    run.enable_precision(config)
    plan = make_plan(config, run.prepare(config))
    rows = final_rows(study)
    if workdir is None:
        workdir = rundir.create(config.output.dir, name)
    with rundir.locked(workdir):  # one writer at a time, as for a sweep
        _check_report_directory(workdir, url, name)
        rundir.write_text(os.path.join(workdir, REPORT_OF),
                          json.dumps({"storage": url, "study": name}))
        rundir.write_text(os.path.join(workdir, SWEEP_CONFIG), config_lib.dumps(config))
        jsonl.rewrite(os.path.join(workdir, RESULTS), rows)
        written = report.write(config, plan, rows, workdir, study)
    return {**written, "results": rows, "budget": study.user_attrs.get(BUDGET_ATTR),
            "study": study, "workdir": workdir}
