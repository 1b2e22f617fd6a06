"""The scaffolding of the scripts in ``experiments/``: arguments, a sweep, outputs.

An experiment is a config in ``configs/experiments/`` plus a few lines: `start` parses
``--quick`` / ``--out``, loads the config (with the experiment's cut-down overrides under
``--quick``), and returns an `Experiment` whose `sweep` runs the sweep engine into
``results/<name>/``; the script adds its figures with `jaxnn.plots` and calls `finish`,
which writes ``results.md`` (the headline and the results table in markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from jaxnn import cli, run, rundir, sweep
from jaxnn import config as config_lib
from jaxnn._table import format_markdown
from jaxnn.config import Config
from jaxnn.sweep.spec import space_of, spec_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_MD = "results.md"


class Experiment:
    """One experiment run: its config, output directory and data."""

    def __init__(self, name: str, config: Config, out: str, quick: bool,
                 reads: Sequence[str] = ()):
        self.name, self.config, self.out, self.quick = name, config, out, quick
        self.reads = tuple(reads)
        self.started = time.perf_counter()
        run.enable_precision(config)
        self.dataset = run.prepare(config)
        self.figures: list[str] = []

    def path(self, filename: str) -> str:
        return os.path.join(self.out, filename)

    def sweep(self, config: Config | None = None, subdir: str = "sweep") -> dict[str, Any]:
        """Runs the (given or experiment's) sweep into ``OUT/<subdir>``, replacing an earlier
        run's sweep there once this one has finished: it runs in a new directory beside it,
        so a failed or interrupted run leaves the earlier sweep whole (deleting its results
        first, a second run was then refused for the study it left, results lost)."""
        config = config or self.config
        workdir = self.path(subdir)
        scratch = tempfile.mkdtemp(prefix=".new-", dir=self.out)
        fresh = os.path.join(scratch, subdir)  # its name is the study's
        try:
            try:
                self._check_swept(config)
                result = sweep.run_sweep(config, fresh, dataset=self.dataset)
            except rundir.user_errors() as error:  # a bad --set that only the sweep reads
                raise SystemExit(cli.usage_error(error, _prog(self.name))) from None
            if os.path.exists(workdir):
                shutil.rmtree(workdir)
            os.rename(fresh, workdir)
            with contextlib.suppress(FileNotFoundError):  # it described the sweep replaced
                os.remove(self.path(RESULTS_MD))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result["plots"] = [os.path.join(workdir, os.path.relpath(path, fresh))
                           for path in result["plots"]]
        if result["best"] is None:  # nothing to compare: the script's headline has no subject
            print(f"{_prog(self.name)}: no trial completed (every one diverged or was "
                  f"pruned); the sweep's table: {os.path.join(workdir, 'table.txt')}",
                  file=sys.stderr)
            raise SystemExit(cli.EXIT_DIVERGED)
        return result

    def _check_swept(self, config: Config) -> None:
        """Refuses a sweep (changed by ``--set``) that leaves out a name the script reads
        from each trial's values: it failed with a KeyError after the whole sweep ran."""
        names = list(space_of(spec_of(config), config.source))  # as the plan names them
        missing = [name for name in self.reads if name not in names]
        if missing:
            raise config_lib.ConfigError(config.source, "sweep", (
                f"this experiment compares its trials by {', '.join(self.reads)}, and the "
                f"sweep does not vary {', '.join(missing)} (it sweeps "
                f"{', '.join(names) or 'nothing'})"))

    def figure(self, path: str) -> None:
        """Records a figure written by a `jaxnn.plots` helper."""
        self.figures.append(path)

    def finish(self, headline: str, tables: Sequence[tuple[str, Sequence[str], list]]) -> str:
        """Writes ``results.md`` (headline, tables, figures) and prints the headline.

        Args:
          headline: one line with the result that matters.
          tables: (title, header, rows) for each markdown table.
        """
        seconds = time.perf_counter() - self.started
        lines = [f"# {self.name}", "", headline, "",
                 f"Command: `python experiments/{self.name}.py{' --quick' if self.quick else ''}`"
                 f" ({seconds:.0f} s)", ""]
        for title, header, rows in tables:
            lines += [f"## {title}", "", format_markdown(header, rows), ""]
        lines += [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in self.figures]
        rundir.write_text(self.path(RESULTS_MD), "\n".join(lines) + "\n")
        print(headline)
        print(f"results: {self.path(RESULTS_MD)}")
        return headline


def _prog(name: str) -> str:
    """The script's name as its one-line errors and ``--help`` give it."""
    return f"experiments/{name}.py"


def argument_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``experiments/<name>.py``'s arguments, its docstring as ``--help``."""
    return argparse.ArgumentParser(prog=_prog(name), description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def start(
    name: str,
    description: str,
    *,
    quick: Sequence[str] = (),
    argv: Sequence[str] | None = None,
    reads: Sequence[str] = (),
) -> Experiment:
    """Parses the experiment's arguments and loads ``configs/experiments/<name>.toml``.

    Args:
      name: the experiment (and config) name.
      description: the script's docstring, for ``--help``.
      quick: config overrides (``key=value``) of the ``--quick`` cut-down version.
      argv: arguments (default: the command line).
      reads: the swept names the script reads from each trial's values (a ``--set`` that
        sweeps something else is refused before anything trains).

    Raises:
      SystemExit: with `jaxnn.cli.EXIT_USAGE`, after one line naming the argument, config key
        or directory at fault (a bad ``--set``, an ``--out`` that cannot be a directory), as
        the ``jaxnn`` command reports them.
    """
    parser = argument_parser(name, description)
    parser.add_argument("--quick", action="store_true",
                        help="a cut-down version that runs in seconds")
    parser.add_argument("--out", default=str(ROOT / "results" / name),
                        help="output directory (default: results/<experiment>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key")
    args = parser.parse_args(argv)
    if not args.out:
        raise SystemExit(cli.usage_error(cli.empty_flag("--out"), parser.prog))
    overrides = [*(quick if args.quick else ()), "training.progress=false",
                 "output.plots=true", *args.set]
    try:
        config = config_lib.load(ROOT / "configs" / "experiments" / f"{name}.toml", overrides)
        config_lib.refuse_unread_data_keys(config)
        try:
            rundir.make_directory(args.out)
        except rundir.RunError as error:
            raise rundir.RunError(f"--out: {error}") from None
        held = rundir.holds(args.out)
        if held is not None:  # its files would be overwritten and mixed with the experiment's
            raise rundir.RunError(f"--out: {args.out} holds {held}; an experiment needs a "
                                  "directory of its own")
        return Experiment(name, config, args.out, args.quick, reads)
    except rundir.user_errors() as error:
        raise SystemExit(cli.usage_error(error, parser.prog)) from None


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits, "-" for missing."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def result_rows(result: dict, names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a sweep's results, best first, for `Experiment.finish`."""
    header = [*names, "val acc", "test acc", "test loss", "status"]
    rows = [[*[fmt(r["values"].get(n)) for n in names], fmt(r.get("val_accuracy")),
             fmt(r.get("test_accuracy")), fmt(r.get("test_loss")),
             r["status"] + (f" (step {r['diverged_step']})" if r["diverged_step"] is not None
                            else "")]
            for r in sweep.rank(result["plan"], result["results"])]
    return header, rows
