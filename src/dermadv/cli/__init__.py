"""The command line: typer wiring from options to library and pipeline calls, one module per command group."""

from __future__ import annotations

import logging
import sys

import typer

from dermadv.cli import attack, data, defend, observer, report, reproduce, train
from dermadv.errors import DermadvError

app = typer.Typer(
    help="dermadv: audit dermatoscopic image classifiers against adversarial attacks "
    "(reproduces Allyn et al. 2020, Medicine 99(50):e23568).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
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

#: the extra of pyproject.toml that installs each optional package a command may import
EXTRAS = {"fastapi": "web", "uvicorn": "web", "starlette": "web", "multipart": "web", "httpx": "web"}
EXTRAS |= {"art": "art", "medmnist": "medmnist", "playwright": "dev"}


def _setup_logging(verbose: bool = False) -> None:
    from dermadv import distributed as dd

    level = logging.INFO if verbose or dd.is_main() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main() -> None:
    from dermadv import distributed as dd

    # Under torchrun, join the process group first so that logging knows which rank this is.
    dd.init_from_env()
    _setup_logging()
    try:
        app(standalone_mode=False)
    except DermadvError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:  # every command is listed; one that needs a missing extra says which
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        typer.secho(f"error: this command needs {exc.name}; install it with pip install 'dermadv[{extra}]'", err=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # Duck-typed: typer >= 0.23 raises its vendored click's exceptions (typer._click), older typer click's own.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
    finally:
        dd.cleanup()
