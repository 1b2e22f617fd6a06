"""The Optuna study of a sweep: its sampler, its storage, and every trial's record.

Optuna does what it does well here -- the samplers (TPE, CMA-ES, Gaussian process, random),
the study record, its storage and its dashboard -- and jaxnn trains: a batch of trials asked
together trains together, vmapped, in one program. ``results.jsonl`` stays jaxnn's own
record; every row written there is then recorded in the study (`record`), so the two agree
(a resumed sweep first records the rows the study missed).

Each study trial carries the jaxnn trial index (user attribute ``"trial"``), its params, the
validation metric per epoch as intermediate values (step = epoch), and its state: COMPLETE
(with the final value), PRUNED (user attribute ``"pruned_epoch"``; its value the last
intermediate one, as Optuna's ``tell`` records it) or FAIL (diverged,
``"diverged_step"``).

The storage is a journal file in the sweep directory by default (`STUDY_FILE`; open it with
``optuna-dashboard DIR/study.journal`` or ``optuna.load_study``), or any Optuna storage URL
given as ``[sweep] storage``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxnn import config as config_lib
from jaxnn import jsonl, rundir
from jaxnn.config import Config, ConfigError
from jaxnn.sweep.spec import Distribution

STUDY_FILE = "study.journal"
JOURNAL_LOCK_SUFFIX = ".lock"  # Optuna's lock beside a journal file


def check_sampler(search: str, source: str) -> None:
    """Refuses, naming ``sweep.search``, a sampler whose optional packages are missing."""
    needs = {"cmaes": ("cmaes",), "gp": ("torch", "scipy")}.get(search, ())
    import importlib.util

    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(source, "sweep.search", f'search = "{search}" needs Optuna\'s '
                          f"optional {' and '.join(missing)} (pip install {' '.join(missing)})")


def _quiet():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _encoded(dist: Distribution) -> bool:
    """Whether the study stores this choice's values as JSON text: Optuna's storages take
    None, bool, int, float and str, and a grid may list layer tables."""
    return dist.kind == "choice" and not all(_plain(v) for v in dist.values)


def to_study(values: Mapping[str, Any], space: Mapping[str, Distribution]) -> dict:
    """A trial's values as study params."""
    return {name: json.dumps(value, sort_keys=True) if _encoded(space[name]) else value
            for name, value in values.items()}


def from_study(params: Mapping[str, Any], space: Mapping[str, Distribution]) -> dict:
    """Study params as a trial's values."""
    return {name: json.loads(value) if _encoded(space[name]) else value
            for name, value in params.items()}


def distribution(dist: Distribution):
    """The Optuna distribution of a search-space entry."""
    optuna = _quiet()
    if dist.kind == "choice":
        return optuna.distributions.CategoricalDistribution(
            [json.dumps(v, sort_keys=True) for v in dist.values] if _encoded(dist)
            else list(dist.values))
    if dist.kind == "int":
        return optuna.distributions.IntDistribution(int(dist.low), int(dist.high), log=dist.log)
    return optuna.distributions.FloatDistribution(dist.low, dist.high, log=dist.log)


def sampler(search: str, seed: int):
    """The Optuna sampler of ``[sweep] search``. TPE asks with ``constant_liar``: trials asked
    while others of the batch are still running are steered away from them, so a batch does
    not collapse onto one point."""
    optuna = _quiet()
    samplers = optuna.samplers
    if search == "tpe":
        return samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if search == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if search == "gp":
        return samplers.GPSampler(seed=seed)
    return samplers.RandomSampler(seed=seed)


CONFIG_ATTR = "jaxnn_config"  # the study's user attribute holding its sweep config (TOML)
# A `jaxnn sweep`'s study (not a workers' study): the sweep directory it belongs to.
DIRECTORY_ATTR = "jaxnn_sweep_directory"


def configured_storage(url: str, source: str):
    """The ``[sweep] storage`` of the config file ``source``: a database URL, else a journal
    file in an existing directory.

    Raises:
      ConfigError: naming ``sweep.storage``, when it cannot be opened (a bad URL, a missing
        driver or directory, an unreachable server).
    """
    optuna = _quiet()
    if in_memory(url):
        raise ConfigError(source, "sweep.storage", f"{url!r}: {IN_MEMORY}")
    try:
        if "://" not in url:
            directory = os.path.dirname(os.path.abspath(url))
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"no directory {directory}")
            journal = optuna.storages.journal
            return journal.JournalStorage(journal.JournalFileBackend(journal_path(url)))
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # a driver, OSError, a bad URL, or the database's own errors
        raise ConfigError(source, "sweep.storage",
                          f"{url!r}: {storage_failure(error, url)}") from None


IN_MEMORY = ("a database in memory keeps nothing once its process ends: no --resume, and no "
             "other worker, could read it; give a file (sqlite:///PATH) or a server")


def in_memory(url: str) -> bool:
    """Whether ``url`` is an SQLite database in memory (``sqlite://``,
    ``sqlite:///:memory:``, ``mode=memory``)."""
    base = url.strip().split("?", 1)[0]
    return base.startswith("sqlite") and (
        base.endswith("://") or base.endswith(":memory:") or "mode=memory" in url)


def journal_path(path: str) -> str:
    """``path`` made absolute, with a lock a killed worker left that can never be released
    removed.

    Optuna's journal lock is a symlink to the journal, released by whoever finds the journal
    unchanged for its grace period. It judges that through the link, so a link to a relative
    path ``DIR/NAME`` (which resolves from the link's own directory, to ``DIR/DIR/NAME``)
    never resolves: Optuna then retries forever, and every later worker (or sweep) hung. Links made
    here point to an absolute path; a relative one that resolves to nothing can be released
    by no one, and is removed."""
    path = os.path.abspath(path)
    lock = path + JOURNAL_LOCK_SUFFIX
    with contextlib.suppress(OSError):  # no link, or one another worker just released
        if not os.path.isabs(os.readlink(lock)) and not os.path.exists(lock):
            os.remove(lock)
    return path


def storage_failure(error: Exception, url: str) -> str:
    """Why the storage at ``url`` could not be opened, in a line: a missing database driver
    (for PostgreSQL, the extra that installs psycopg 3, which SQLAlchemy takes for a
    ``postgresql+psycopg://`` URL: a plain ``postgresql://`` asks for psycopg2), else the
    first line of the error."""
    if isinstance(error, ImportError):
        if url.startswith("postgresql"):
            return (f"{error} (pip install 'jaxnn[postgres]', and write the URL as "
                    "postgresql+psycopg://...)")
        return f"{error} (install the database's Python driver)"
    if "://" not in url and isinstance(error, KeyError | AssertionError | TypeError |
                                       ValueError | AttributeError):
        # Optuna replays every record as it opens a journal; another file's lines fail there.
        return (f"not an Optuna journal, or a damaged one (a record Optuna cannot replay: "
                f"{type(error).__name__}: {error})")
    return f"cannot open it: {str(error).splitlines()[0]}"


def storage_of(spec: Mapping[str, Any], workdir: str, source: str = ""):
    """The study's storage: ``[sweep] storage`` (a URL) or a journal file in ``workdir``.

    The journal's lock file (Optuna's, a symlink) is only ever taken by the process that
    holds ``workdir``'s own lock (`jaxnn.rundir.locked`, which the caller must hold), so
    one found here was left by a process that died holding it: it is removed, or every
    later append would wait for it forever (Optuna 5.1 retries a lock whose symlink is
    relative without ever judging it stale). A last line cut short (a kill, a full disk) is
    cut off, as `jaxnn.jsonl.repair` does for results: Optuna skips it when reading but
    appends after it, gluing the next record to it, and that record was lost (the resumed
    sweep's next trial: an AttributeError inside Optuna).
    """
    optuna = _quiet()
    if spec.get("storage"):
        return configured_storage(spec["storage"], source)
    path = os.path.abspath(os.path.join(workdir, STUDY_FILE))
    with contextlib.suppress(FileNotFoundError):
        os.remove(path + JOURNAL_LOCK_SUFFIX)
    jsonl.repair(path)  # each of its lines is a JSON object
    journal = optuna.storages.journal
    try:
        return journal.JournalStorage(journal.JournalFileBackend(path))
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as error:
        # Optuna replays every record as it opens the journal; an edited one fails there.
        raise rundir.RunError(f"{path}: a record Optuna cannot replay ({type(error).__name__}"
                              f": {error}); the file is damaged, and nothing was "
                              "changed") from None


def open_study(config: Config, spec: Mapping[str, Any], workdir: str, metric: str,
               resume: bool, recorded: bool = False):
    """Creates the sweep's study (named after its directory, ``config`` kept in it), or
    loads it to resume.

    A resumed study's sampler is seeded by the sweep's seed and the trials the study holds,
    so it asks for new values, not again for those it asked before the sweep stopped (the
    values after a resume are not those an uninterrupted sweep would have drawn).
    ``recorded``: the resumed sweep has finished trials (so its study must exist).

    Raises:
      RunError: a new sweep whose study name the storage already holds, or a resumed one
        whose config differs from the study's (beyond `jaxnn.config.RESUMABLE`) or whose
        study is missing.
    """
    optuna = _quiet()
    name = os.path.basename(os.path.normpath(workdir))
    storage = storage_of(spec, workdir, config.source)
    direction = "maximize" if metric.endswith("accuracy") else "minimize"
    seed = spec.get("seed", 0)
    chosen = sampler(spec["search"], seed)
    if resume:
        study = _resumed_study(optuna, name, storage, spec, recorded)
        if study is not None:
            _check_resumed_config(study, config, spec.get("storage") or os.path.join(
                workdir, STUDY_FILE))
            # Seeded as at the start, the sampler would ask again for the values it asked
            # before the sweep stopped: seeded by the trials the study holds, it goes on.
            asked = len(study.get_trials(deepcopy=False))
            study.sampler = sampler(spec["search"], int(
                np.random.SeedSequence([seed, asked]).generate_state(1)[0]))
            return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                    sampler=chosen)
    except optuna.exceptions.DuplicatedStudyError:
        raise rundir.RunError(f"the study storage already holds a study named {name!r}; "
                              "resume that sweep or choose another directory") from None
    study.set_user_attr(CONFIG_ATTR, config_lib.dumps(config))
    study.set_user_attr(DIRECTORY_ATTR, os.path.abspath(workdir))
    return study


def _resumed_study(optuna, name: str, storage, spec: Mapping[str, Any], recorded: bool):
    """The study a resumed sweep continues, or None when it was stopped before creating it.
    The directory's own journal holds its sweep's study alone, found whatever the directory
    is called now (moved or copied); a ``[sweep] storage`` is searched by name.

    Raises:
      RunError: no study, but the sweep recorded trials (it would start a second one).
    """
    names = [name] if spec.get("storage") else optuna.get_all_study_names(storage)
    if len(names) == 1:
        with contextlib.suppress(KeyError):
            return optuna.load_study(study_name=names[0], storage=storage)
    if len(names) > 1:
        raise rundir.RunError(f"{name}: {STUDY_FILE} holds several studies "
                              f"({', '.join(map(repr, names))}), none of them alone this "
                              "sweep's; the file is not this sweep's own")
    if recorded and spec.get("storage"):
        raise rundir.RunError(
            f"{name}: no study of this name in {spec['storage']}; a sweep with [sweep] "
            "storage resumes only in a directory of the name it began in")
    if recorded:
        raise rundir.RunError(
            f"{name}: {STUDY_FILE} holds no study, though the sweep recorded finished trials "
            "(the journal was removed or emptied): its search cannot go on; start a new "
            "sweep")
    return None


def study_config(study, source: str, kept_in: str) -> Config:
    """The sweep config the study was created with (``kept_in``: where the study is, for
    an error: a damaged record is refused naming it)."""
    return config_lib.loads_kept(study.user_attrs[CONFIG_ATTR], source, kept_in)


def _check_resumed_config(study, config: Config, kept_in: str) -> None:
    """Refuses a resumed sweep whose config (an edited ``sweep.toml``) is not the study's
    (kept in ``kept_in``): its trials would mix two sweeps' settings. A study without one
    (older) is not checked."""
    if CONFIG_ATTR not in study.user_attrs:
        return
    change = config_lib.resume_change(study_config(study, config.source, kept_in), config)
    if change is not None:
        key, was, now = change
        raise rundir.RunError(f"{config.source}: {key} is {now!r}, but the sweep was started "
                              f"with {was!r} (its study); restore it, or start a new sweep "
                              "to change it")


def by_index(study) -> dict[int, Any]:
    """The study's trials by jaxnn trial index."""
    return {t.user_attrs["trial"]: t for t in study.get_trials(deepcopy=False)
            if "trial" in t.user_attrs}


def ask(study, space: Mapping[str, Distribution], index: int) -> dict:
    """Asks the sampler for trial ``index``'s values (recorded as RUNNING)."""
    trial = study.ask({name: distribution(d) for name, d in space.items()})
    trial.set_user_attr("trial", index)
    return from_study(trial.params, space)


def refuse(study, trial_id: int, reason: str) -> None:
    """Records the running study trial ``trial_id`` as failed, ``reason`` its user attribute
    ``"refused"``: values asked for that no trial can take."""
    optuna = _quiet()
    live = optuna.trial.Trial(study, trial_id)
    live.set_user_attr("refused", reason)
    study.tell(live, state=optuna.trial.TrialState.FAIL)


def trial_state(status: str):
    """The study state of a row's status: COMPLETE, PRUNED or FAIL (diverged)."""
    states = _quiet().trial.TrialState
    return {"completed": states.COMPLETE, "pruned": states.PRUNED,
            "diverged": states.FAIL}[status]


def _outcome(row: dict, metric: str):
    """A row's study record: ``(state, value, intermediate values, user attributes)``."""
    state = trial_state(row["status"])
    curve = row["curves"].get(metric, [])
    intermediate = {epoch: value for epoch, value in enumerate(curve, 1) if value is not None}
    attrs = {"trial": row["trial"], "epochs": row["epochs"]}
    if row["status"] == "pruned":
        attrs["pruned_epoch"] = row["epochs"]
    if row["status"] == "diverged":
        attrs["diverged_step"] = row["diverged_step"]
    value = row.get(metric) if row["status"] == "completed" else None
    if row["status"] == "pruned" and intermediate:  # as Optuna's `tell` records one
        value = intermediate[max(intermediate)]
    return state, value, intermediate, attrs


def tell(study, trial_id: int, row: dict, metric: str,
         attrs: Mapping[str, Any] | None = None) -> None:
    """Tells the running trial ``trial_id`` its row's outcome (with ``attrs`` added to its
    user attributes).

    Raises:
      optuna.exceptions.UpdateFinishedTrialError: the trial has already finished (a worker
        judged its heartbeat stale).
    """
    optuna = _quiet()
    state, value, intermediate, own = _outcome(row, metric)
    live = optuna.trial.Trial(study, trial_id)
    known = live.storage.get_trial(trial_id).intermediate_values
    for epoch, metric_value in intermediate.items():
        if epoch not in known:
            live.report(metric_value, epoch)
    for key, attr in {**own, **(attrs or {})}.items():
        live.set_user_attr(key, attr)
    try:
        study.tell(live, value if state == optuna.trial.TrialState.COMPLETE else None,
                   state=state)
    except ValueError as error:  # "Cannot tell a FAIL trial": failed meanwhile, as stale
        if not live.storage.get_trial(trial_id).state.is_finished():
            raise
        raise optuna.exceptions.UpdateFinishedTrialError(str(error)) from None


def record(study, rows: Iterable[dict], space: Mapping[str, Distribution], metric: str) -> None:
    """Records finished trials (rows of ``results.jsonl``) in the study: a trial it asked is
    told its outcome; a grid trial, or one it lost, is added whole."""
    optuna = _quiet()
    known = by_index(study)
    for row in rows:
        existing = known.get(row["trial"])
        if existing is None:
            state, value, intermediate, attrs = _outcome(row, metric)
            study.add_trial(optuna.trial.create_trial(
                params=to_study(row["values"], space),
                distributions={name: distribution(space[name]) for name in row["values"]},
                value=value, intermediate_values=intermediate, user_attrs=attrs, state=state))
        elif existing.state == optuna.trial.TrialState.RUNNING:
            tell(study, existing._trial_id, row, metric)


def running(study, space: Mapping[str, Distribution]) -> dict[int, dict]:
    """Trials the study asked for but never heard back about (a killed sweep's last batch),
    by jaxnn index: ``{index: values}``."""
    optuna = _quiet()
    return {index: from_study(t.params, space) for index, t in by_index(study).items()
            if t.state == optuna.trial.TrialState.RUNNING}
