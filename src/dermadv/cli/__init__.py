"""The command line: typer wiring from options to library and pipeline calls, one module per command group."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from dermadv.cli import attack, data, defend, faults, model, observer, report, reproduce, results, train
from dermadv.errors import DermadvError

if TYPE_CHECKING:
    from dermadv.runs import Run

app = typer.Typer(
    help="dermadv: audit dermatoscopic image classifiers against adversarial attacks "
    "(reproduces Allyn et al. 2020, Medicine 99(50):e23568).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich markup would swallow "[default: …]" and show flags as <bool>
)


def _print_version(value: bool) -> None:
    if value:
        from dermadv import __version__

        typer.echo(f"dermadv {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


app.add_typer(data.app, name="data")
app.command()(train.models)
app.command()(train.train)
app.command()(train.evaluate)
app.add_typer(attack.app, name="attack")
app.command("evaluate-attack")(attack.evaluate_attack)
app.add_typer(defend.app, name="defend")
app.add_typer(observer.app, name="observer")
app.command()(reproduce.reproduce)
app.command()(report.report)
app.command()(results.results)
app.add_typer(model.app, name="model")
app.command()(model.audit)

#: the extra of pyproject.toml that installs each optional package a command may import
EXTRAS = {"fastapi": "web", "uvicorn": "web", "starlette": "web", "multipart": "web", "httpx": "web"}
EXTRAS |= {"art": "art", "medmnist": "medmnist", "playwright": "dev"}


def _torchrun() -> bool:
    """Launched by torchrun with more than one process (checked without importing torch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _setup_logging(verbose: bool = False) -> None:
    main_process = True
    if _torchrun():
        from dermadv import distributed as dd

        main_process = dd.is_main()
    level = logging.INFO if verbose or main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the audit's own


def _run_app(opened: Sequence[Run] = ()) -> tuple[int, str]:
    """Run the typer app; returns the exit code and, for a failure, why.

    ``opened``: the runs the command opens (filled while it runs), whose folder a write that names no file was in.
    """
    unwritable = faults.unwritable_out(sys.argv[1:])
    if unwritable is not None:  # before any work, not at the first write minutes later
        typer.secho(f"error: {unwritable}", fg=typer.colors.RED, err=True)
        return 1, unwritable
    try:
        code = app(standalone_mode=False)
    except DermadvError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 1, str(exc)
    except OSError as exc:  # a full disk, a quota, a read-only or forbidden path: one line; anything else is a bug
        message = faults.storage_message(exc, opened)
        if message is None:
            raise
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        return 1, message
    except ModuleNotFoundError as exc:  # every command is listed; one that needs a missing extra says which
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        message = f"this command needs {exc.name}; install it with pip install 'dermadv[{extra}]'"
        typer.secho(f"error: {message}", err=True)
        return 1, message
    except (typer.Abort, KeyboardInterrupt):
        return 130, "interrupted"
    except SystemExit as exc:  # sys.exit inside a command
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0, f"exit code {exc.code}"
        typer.echo(exc.code, err=True)
        return 1, str(exc.code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # Duck-typed: typer >= 0.23 raises its vendored click's exceptions (typer._click), older typer click's own.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            return exit_code, str(exc)
        raise
    # typer returns the code of a typer.Exit it caught, and 130 for Ctrl-C; a command itself returns None.
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    return code, "interrupted" if code == 130 else f"exit code {code}"


def main() -> None:
    """The ``dermadv`` console script: exit 0 on success, 1 on an error, 2 on a usage error, 130 on Ctrl-C, 143 on
    SIGTERM.

    A run folder whose command stops early is marked ``interrupted`` or ``failed`` rather than left "running".
    The command modules import their heavy dependencies inside the commands, so ``observer serve`` loads no
    torch (serving a study needs no model); torch.distributed is joined only under torchrun.
    """
    import os
    import signal
    import warnings

    from dermadv.runs import abandon_runs, watch_runs

    # torch's OpenMP threads spin while they wait for each other: on a machine where another process holds a core,
    # two spinning threads on the one core left slowed `make demo`'s generator 20-fold. Waiting threads sleep instead
    # (set before torch loads its OpenMP runtime; a value in the environment is kept).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    terminated = []

    def on_sigterm(signum: int, frame: object) -> None:  # a scheduler's or `kill`'s stop: as Ctrl-C, exit 143
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Pillow only warns about an image between its pixel limit and twice it, then decodes it (gigabytes): refused
    # instead, naming the file (dermadv.data.cache), as beyond twice the limit.
    warnings.filterwarnings("error", message="Image size", category=RuntimeWarning, module="PIL")
    torchrun = _torchrun()
    if torchrun:
        from dermadv import distributed as dd

        # Join the process group first so that logging knows which rank this is.
        dd.init_from_env()
    _setup_logging()
    with watch_runs() as opened:
        try:
            code, reason = _run_app(opened)
        except BaseException as exc:  # a bug: its traceback follows, and the runs it opened say failed
            abandon_runs(opened, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if torchrun:
                dd.cleanup()
    if code == 130 and terminated:
        typer.secho("terminated", err=True)
        abandon_runs(opened, "interrupted", "stopped by SIGTERM")
        code = 143
    elif code == 130:
        typer.secho("interrupted", err=True)
        abandon_runs(opened, "interrupted", "stopped by Ctrl-C (SIGINT)")
    elif code:
        abandon_runs(opened, "failed", reason)
    sys.exit(code)
