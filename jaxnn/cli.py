"""The ``jaxnn`` command: ``jaxnn train``, ``jaxnn sweep``, ``jaxnn summary``.

Errors a user can act on (a bad config, missing data, a taken run directory, a bad
checkpoint) print one line naming the file and key, and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable

from jaxnn import compile_cache, processes, rundir
from jaxnn import config as config_lib
from jaxnn._table import counted
from jaxnn.config import Config, ConfigError

EXIT_USAGE = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
JOIN_TIMEOUT_S = 120  # for every --distributed process to join (JAX's own default: 300)
DEFAULT_SOURCE = "<default config (= configs/mlp_digits.toml)>"


def usage_error(message: object, prog: str = "jaxnn") -> int:
    """Prints ``PROG: error: MESSAGE``, one line on stderr; returns `EXIT_USAGE`."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def empty_flag(flag: str) -> str:
    """The error for a flag given an empty value, which would read as the flag left out."""
    return f"{flag}: empty; give a value or leave the flag out"


def load_config(path: str | None, overrides: list[str]) -> Config:
    """The config at ``path`` with overrides (a new run's or sweep's: checked as a stored
    one is not, `jaxnn.config.refuse_unread_data_keys`, and a run's optimizer and schedule
    keys, `jaxnn.optim.unread_keys`); the built-in default run when ``path`` is None."""
    if path is None:
        raw = config_lib.apply_overrides({}, overrides, DEFAULT_SOURCE)
        config = config_lib.from_dict(raw, DEFAULT_SOURCE)
    else:
        config = config_lib.load(path, overrides)
    config_lib.refuse_unread_data_keys(config)
    if not config.sweep:  # (a sweep over optimizers may set a key some of them read)
        from jaxnn import optim

        unread = optim.unread_keys(config.optimizer, config.schedule)
        if unread:
            key, value, readers = unread[0]
            value = list(value) if isinstance(value, tuple) else value
            raise ConfigError(config.source, key, (
                f"{value!r} is not read by {getattr(config, key.split('.')[0]).name!r} "
                f"(only by {readers}); leave it out"))
    return config


def _workdir(config: Config, path: str | None) -> str:
    """A new, unique ``OUTPUT_DIR/NAME-TIME[-N]`` directory."""
    stem = os.path.splitext(os.path.basename(path))[0] if path else "mlp_digits"
    try:
        return rundir.create(config.output.dir, stem)
    except rundir.RunError as error:  # a file, or a directory that cannot be made
        raise ConfigError(config.source, "output.dir", str(error)) from None


_WHAT = {"train": rundir.RUN, "sweep": rundir.SWEEP}


def _not_a_sweep(config: Config) -> None:
    if config.sweep:  # it trained the base config alone, as if the sweep were not there
        raise ConfigError(config.source, "sweep", "this config describes a sweep: run it "
                          "with `jaxnn sweep`, or train its base config alone with "
                          "--set 'sweep={}'")


def _directory(args: argparse.Namespace, stored: str,
               check: Callable[[Config], None] = lambda config: None):
    """``(config, workdir, created)`` of a command: the stored config of ``--resume DIR``, or
    the given config (passed to ``check`` first) in ``--workdir`` or a new directory
    (``created``)."""
    if args.resume:
        if args.config:
            raise ConfigError(args.config, "", f"give either a config or --resume {args.resume}")
        if not os.path.isdir(args.resume):
            raise rundir.RunError(f"{args.resume}: nothing to resume (not a directory)")
        held = rundir.holds(args.resume)
        if not os.path.exists(os.path.join(args.resume, stored)) and held not in (
                None, _WHAT[args.command]):  # the other command's kind
            other = [command for command, kind in _WHAT.items() if kind == held]
            raise rundir.RunError(f"{args.resume} holds {held}, not {_WHAT[args.command]}"
                                  + "".join(f"; resume it with jaxnn {command} --resume "
                                            f"{args.resume}" for command in other))
        return config_lib.load_for_resume(os.path.join(args.resume, stored), args.set), \
            args.resume, False
    config = load_config(args.config, args.set)
    check(config)
    if args.workdir:
        return config, args.workdir, False
    return config, _workdir(config, args.config), True


def _train(args: argparse.Namespace) -> int:
    from jaxnn import run

    config, workdir, created = _directory(args, run.CONFIG, _not_a_sweep)
    with rundir.guarded(workdir, "train", created=created, resumable=config.output.checkpoint
                        or os.path.exists(os.path.join(workdir, run.CHECKPOINT))):
        summary = run.train_and_evaluate(config, workdir, resume=bool(args.resume))
    accuracy = summary["test_accuracy"]
    print(f"run directory: {workdir}")
    print(f"status: {summary['status']}  epochs: {summary['epochs_run']}  "
          f"test loss: {summary['test_loss']:.4f}"
          + (f"  test accuracy: {accuracy:.4f}" if accuracy is not None else "")
          + f"  wall time: {summary['wall_time_s']:.1f} s"
          + f"  compile: {summary['compile_time_s']:.1f} s")
    if summary["message"]:
        print(summary["message"])
    if summary.get("plots"):
        print("plots: " + ", ".join(summary["plots"]))
    return EXIT_DIVERGED if summary["status"] == "diverged" else 0


def _join(args: argparse.Namespace) -> None:
    """Joins JAX's distributed runtime (`jax.distributed.initialize`) before anything touches
    a device: the coordinator address, process count and id come from the flags, else from
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, else from the
    cluster (SLURM, Open MPI, ...), as JAX detects it."""
    import jax

    from jaxnn.run import RunError

    if not (args.workdir or args.resume):
        raise RunError("--distributed needs --workdir DIR (or --resume DIR), one directory "
                       "that process 0 writes and every process names alike")

    def number(flag, variable):
        value = flag if flag is not None else os.environ.get(variable)
        try:
            return None if value is None else int(value)
        except ValueError:
            raise RunError(f"{variable}={value!r} is not a whole number") from None

    count = number(args.num_processes, "JAX_NUM_PROCESSES")
    index = number(args.process_id, "JAX_PROCESS_ID")
    if count is not None and count < 1:
        raise RunError(f"--num-processes {count}: must be >= 1")
    if index is not None and (index < 0 or (count is not None and index >= count)):
        raise RunError(f"--process-id {index}: must be >= 0 and below --num-processes "
                       f"({count})")
    for name, address in (("--coordinator", args.coordinator),
                          ("JAX_COORDINATOR_ADDRESS", os.environ.get("JAX_COORDINATOR_ADDRESS"))):
        if address is None:
            continue
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:  # else a segfault
            raise RunError(f"{name} {address!r}: expected HOST:PORT, a port from 1 to 65535")
        break  # the flag is the one JAX takes
    timeout = JOIN_TIMEOUT_S if args.join_timeout is None else args.join_timeout
    if timeout < 1:
        raise RunError(f"--join-timeout {timeout}: must be >= 1 second")
    # JAX's runtime aborts the process when the others do not join in time (a C++ check
    # failure and its stack, exit 134): this process stops first, with one line.
    joined, deciding = [], threading.Lock()  # joined just as the time ran out: it stays

    def not_joined() -> None:
        with deciding:
            if not joined:
                _not_joined(timeout, count, index)

    watchdog = threading.Timer(timeout, not_joined)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=count, process_id=index,
                                   initialization_timeout=timeout + 60)
    except (ValueError, IndexError) as error:  # what JAX could not find or parse
        raise RunError(f"--distributed: {error} (give --coordinator HOST:PORT, "
                       "--num-processes and --process-id, or run under a cluster JAX "
                       "detects)") from None
    finally:
        with deciding:
            joined.append(True)
        watchdog.cancel()


def _not_joined(timeout: int, count: int | None, index: int | None) -> None:
    """Ends the process (exit 2) whose distributed runtime still waits for the others."""
    which = "" if index is None else f"process {index}: "
    expected = "" if count is None else f" {count}"
    usage_error(f"--distributed: {which}not all{expected} processes joined within {timeout} s; "
                "start every one with the same --num-processes and --coordinator and its own "
                "--process-id (a process that stopped said why; --join-timeout waits longer)")
    sys.stderr.flush()
    os._exit(EXIT_USAGE)  # the main thread waits inside JAX's runtime, beyond an exception


def _shared(args: argparse.Namespace) -> int:
    """A worker on a shared study, or (``--report``) the study's report."""
    from jaxnn.run import RunError
    from jaxnn.sweep import workers

    if not (args.storage and args.study):
        raise RunError("--storage URL and --study NAME go together (a worker, or --report)")
    taken = [flag for flag, given in (("--resume", args.resume), ("--plan", args.plan),
                                      ("--distributed", args.distributed)) if given]
    if taken:
        raise RunError(f"{taken[0]} does not go with --storage/--study: a worker resumes "
                       "by itself (the study is the record)")
    if args.report:
        if args.config:
            raise ConfigError(args.config, "", "--report takes the sweep's config from the "
                              "study; give no config")
        if args.set:
            raise RunError(f"--set: not with --report (the report is of the study's config; "
                           f"{args.set[0]!r} would change nothing)")
        result = workers.write_report(args.storage, args.study, args.workdir)
        print(result["table"])
        print(f"\nreport directory: {result['workdir']}  ({len(result['results'])} of "
              f"{result['budget']} trials of study {args.study!r} finished)")
        _print_best(result, result["workdir"])
        return 0
    if args.workdir:
        raise RunError("a worker writes only to the study; write its report with "
                       "jaxnn sweep --report --storage URL --study NAME --workdir DIR")
    if args.heartbeat is not None and args.heartbeat < 1:
        raise RunError(f"--heartbeat {args.heartbeat}: must be >= 1 second (a worker that "
                       "beats less would have its trials taken as stale at once)")
    config = load_config(args.config, args.set)
    try:
        result = workers.run_worker(config, args.storage, args.study,
                                    **({"heartbeat": args.heartbeat} if args.heartbeat else {}))
    except KeyboardInterrupt:
        print(f"jaxnn: interrupted; study {args.study!r} keeps every finished trial, and this "
              "worker's unfinished ones wait for the next worker", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"worker {workers.worker_name()}: trained {len(result['trained'])} trials; study "
          f"{args.study!r}: {result['done']} of {result['budget']} finished "
          f"({result['wall_time_s']:.1f} s)")
    print(f"report: jaxnn sweep --report --storage {args.storage} --study {args.study}")
    return 0


def _print_best(result: dict, workdir: str) -> None:
    best = result["best"]
    if best is None:
        print("no trial completed (every one diverged): no best.toml")
    else:
        print(f"best: trial {best['trial']} {best['values']} -> {workdir}/best.toml "
              f"(jaxnn train {workdir}/best.toml)")
    if result["plots"]:
        print("plots: " + ", ".join(result["plots"]))


def _sweep(args: argparse.Namespace) -> int:
    from jaxnn import run, sweep
    from jaxnn.sweep import execute

    if args.heartbeat is not None and not (args.storage and not args.report):  # ignored
        raise rundir.RunError("--heartbeat is a worker's: it goes with --storage and --study "
                              "(and not with --report)")
    if args.storage or args.study or args.report:
        return _shared(args)
    if args.distributed:
        _join(args)

    # A config one process refuses is refused in every one (the others would wait for it).
    config, workdir, created = processes.together(
        lambda: _directory(args, sweep.SWEEP_CONFIG) if args.resume or not args.plan
        else (load_config(args.config, args.set), None, False), rundir.user_errors())
    if args.plan:  # a resumed sweep's plan, with the checks its --resume makes
        run.enable_precision(config)
        print(execute.planned(config)[1].describe())
        return 0
    with rundir.guarded(workdir, "sweep", created=created):
        result = sweep.run_sweep(config, workdir, resume=bool(args.resume))
    if args.distributed:
        import jax
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxnn sweep: written")
        if jax.process_index() != 0:
            return 0  # process 0 wrote the results and reports them
    print(result["table"])
    cached = (f", {result['programs_loaded']} of them from the compile cache"
              if result["programs_loaded"] else "")
    print(f"\nsweep directory: {workdir}  "
          f"({counted(result['programs_compiled'], 'compiled program')}"
          f"{cached}, "
          f"{result['trial_epochs']} trial-epochs, {result['wall_time_s']:.1f} s)")
    _print_best(result, workdir)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from jaxnn import models, run
    from jaxnn.summary import summary

    config = load_config(args.config, args.set)
    run.enable_precision(config)
    dataset = run.prepare(config)
    net = models.build(config.model, dataset.output_size, source=config.source)
    print(f"{config.source}: {dataset.name}, {len(dataset.x_train)} training examples")
    print(summary(net, (None, *dataset.input_shape)))
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    top = argparse.ArgumentParser(prog="jaxnn", description="Functional neural networks on JAX.")
    commands = top.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.add_argument("config", nargs="?", help="a TOML config (default: the MLP on digits)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set training.epochs=5")
        return sub

    def with_cache(sub: argparse.ArgumentParser) -> None:
        cache = sub.add_mutually_exclusive_group()
        cache.add_argument("--compile-cache", metavar="DIR",
                           help="XLA's compiled programs are kept here and reused by later runs "
                           "(default: $JAXNN_COMPILE_CACHE, else $XDG_CACHE_HOME/jaxnn/xla or "
                           "~/.cache/jaxnn/xla); a sweep's, the "
                           "least recently used deleted beyond $JAXNN_COMPILE_CACHE_MAX_MB "
                           f"(default {compile_cache.DEFAULT_MAX_MB}); "
                           "JAXNN_COMPILE_CACHE=off turns it off")
        cache.add_argument("--no-compile-cache", dest="compile_cache", action="store_const",
                           const=compile_cache.OFF, help="compile everything afresh")

    train = with_config("train", "Train a network from a config and write a run directory.")
    with_cache(train)
    train.add_argument("--workdir", help="run directory (default: OUTPUT_DIR/NAME-TIME)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its last checkpoint")
    train.set_defaults(handler=_train)
    sweep = with_config("sweep", "Run a hyperparameter sweep ([sweep] section) as few "
                        "compiled programs.")
    with_cache(sweep)
    sweep.add_argument("--plan", action="store_true",
                       help="print the groups, trials, programs and memory; run nothing")
    sweep.add_argument("--workdir", help="sweep directory (default: OUTPUT_DIR/NAME-TIME)")
    sweep.add_argument("--resume", metavar="SWEEP_DIR",
                       help="continue a killed sweep, skipping finished trials")
    sweep.add_argument("--cpu-devices", type=_device_count, metavar="N",
                       help="on a CPU, split it into N devices and shard the trials over "
                       "them (default: one per core; 1: one device; not with --distributed)")
    spmd = sweep.add_argument_group(
        "several processes", "Run the same command in every process: the trial axis is sharded "
        "over every process's devices (jax.distributed) and process 0 writes.")
    spmd.add_argument("--distributed", action="store_true",
                      help="join JAX's distributed runtime first (needs --workdir)")
    spmd.add_argument("--coordinator", metavar="HOST:PORT",
                      help="process 0's address (default: $JAX_COORDINATOR_ADDRESS)")
    spmd.add_argument("--num-processes", type=int, metavar="N",
                      help="number of processes (default: $JAX_NUM_PROCESSES)")
    spmd.add_argument("--process-id", type=int, metavar="I",
                      help="this process, 0 ... N-1 (default: $JAX_PROCESS_ID)")
    spmd.add_argument("--join-timeout", type=int, metavar="SECONDS",
                      help="give up (exit 2) when not every process has joined within this "
                      f"time (default: {JOIN_TIMEOUT_S})")
    shared = sweep.add_argument_group(
        "workers on a shared study", "Any number of workers, anywhere, train one sweep "
        "through an Optuna study in a shared storage; a killed worker's trials are retried.")
    shared.add_argument("--storage", metavar="URL",
                        help="the study's storage: a database URL (postgresql+psycopg://..., "
                        "sqlite:///...) or a journal file path on a shared file system")
    shared.add_argument("--study", metavar="NAME", help="the study's name")
    shared.add_argument("--heartbeat", type=int, metavar="SECONDS",
                        help="a worker's heartbeat interval; a trial whose worker has missed "
                        "a few is given to another (default: 10)")
    shared.add_argument("--report", action="store_true",
                        help="write the study's table, CSV, best.toml and plots (to --workdir "
                        "or a new directory) instead of working")
    sweep.set_defaults(handler=_sweep)
    summary = with_config("summary", "Print the network's layers, shapes and parameter counts.")
    summary.set_defaults(handler=_summary)
    return top


# The most CPU devices a sweep splits the CPU into: XLA starts threads per device (10,000
# aborted, 2**31 failed to start the backend).
MAX_CPU_DEVICES = 1024


def _device_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_CPU_DEVICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device count (1 to "
                                         f"{MAX_CPU_DEVICES})")
    return int(text)


def main(argv: list[str] | None = None, *, owns_process: bool = False) -> int:
    """Runs the command; returns the exit status.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).
      owns_process: nothing else runs in this process, so process-wide JAX settings may be
        made: ``jaxnn sweep`` splits the CPU into devices (`jaxnn.host.split_cpu`).
    """
    args = parser().parse_args(argv)
    spmd = [flag for flag, value in (("--coordinator", getattr(args, "coordinator", None)),
                                     ("--num-processes", getattr(args, "num_processes", None)),
                                     ("--process-id", getattr(args, "process_id", None)),
                                     ("--join-timeout", getattr(args, "join_timeout", None)))
            if value is not None]
    # An empty value reads as the flag left out (a default directory, no resume): refused.
    empty = [flag for flag, name in (("--workdir", "workdir"), ("--resume", "resume"),
                                     ("--compile-cache", "compile_cache"),
                                     ("--storage", "storage"), ("--study", "study"))
             if getattr(args, name, None) == ""]
    if empty:
        return usage_error(empty_flag(empty[0]))
    if getattr(args, "resume", None) and args.workdir is not None:
        return usage_error(f"--workdir: not with --resume (a resumed {args.command} "
                           f"continues in its own directory, {args.resume})")
    if getattr(args, "plan", False) and args.workdir is not None and not getattr(
            args, "distributed", False):  # (a distributed plan names its directory)
        return usage_error("--workdir: not with --plan (a plan is printed; nothing is "
                           "written)")
    if spmd and not args.distributed:
        return usage_error(f"{spmd[0]}: only with --distributed")
    if args.command == "sweep" and args.distributed and args.cpu_devices:
        return usage_error("--cpu-devices: not with --distributed (each process's devices "
                           "are its own)")
    if owns_process and args.command == "sweep" and not args.distributed:
        from jaxnn import host

        host.split_cpu(args.cpu_devices)
    try:
        if hasattr(args, "compile_cache"):
            compile_cache.enable(args.compile_cache, whole_programs=owns_process and (
                args.command == "sweep" and not args.distributed))
        return args.handler(args)
    except rundir.user_errors() as error:
        return usage_error(error)
    except OSError as error:  # the system refused a write midway: a full disk, a lost mount
        if isinstance(error, BrokenPipeError):  # stdout's reader has gone: console_main's
            raise
        return usage_error(rundir.system_refused(error))
    except rundir.Interrupted as interrupted:
        print(f"jaxnn: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("jaxnn: interrupted before anything was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def console_main() -> None:
    """The console-script entry point. It owns the process, so it tunes malloc for XLA's
    CPU runtime (`jaxnn.host.retain_freed_memory`), keeps the imported modules' objects out
    of the garbage collector's way, and exits without collecting them
    (`jaxnn.host.freeze_long_lived_objects`), and lets a sweep split the CPU."""
    from jaxnn import host

    host.retain_freed_memory()
    host.freeze_long_lived_objects()
    try:
        status = main(owns_process=True)
        sys.stdout.flush()  # here, not in the interpreter's exit, where it cannot be caught
    except BrokenPipeError:  # `jaxnn summary CONFIG | head -1`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit flush
        status = 1
    if status == EXIT_INTERRUPTED:
        # Ctrl-C may land while XLA compiles on its own threads; the interpreter's teardown
        # then destroyed what they used (a segfault in 3 of 4 tries). What was written is
        # synced, and the OS releases the directory's lock: end here.
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a closed pipe
                stream.flush()
        os._exit(status)
    host.freeze_long_lived_objects()
    sys.exit(status)


if __name__ == "__main__":
    console_main()
