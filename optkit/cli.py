"""The `optkit` command line.

Each sub-command lives in its own module under optkit/commands and is imported only when
it is invoked, so `optkit --help` and `--version` never import TensorFlow (a test enforces it).
The CLI parses, calls the library and renders; logic belongs in the library.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from optkit import __version__
from optkit.errors import OptkitError

# name -> (module:attribute, one-line help shown by `optkit --help` without importing it)
COMMANDS = {
    "zoo": ("optkit.commands.zoo:zoo", "List and build the course's architectures."),
    "inspect": ("optkit.commands.inspect:inspect_cmd", "Parameters, FLOPs, layers, flavour and applicable rewrites."),
    "export": ("optkit.commands.export:export_cmd", "Export to TFLite/ONNX/TensorRT/CoreML/SavedModel, validated."),
    "bench": ("optkit.commands.bench:bench_cmd", "Measure latency (and accuracy) of artifacts on a runtime."),
    "gate": ("optkit.commands.gate:gate_cmd", "Decide whether a candidate is slower than a baseline."),
    "report": ("optkit.commands.report:report_cmd", "Render a report.json as Markdown, HTML or CSV."),
    "optimize": ("optkit.commands.optimize:optimize_cmd", "Rewrite, speed up, compress, export, benchmark, report."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("optkit"):
                return _missing(name)
            raise
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx, args):
        # Friendly "did you mean" for a mistyped command name.
        name = args[0] if args else None
        if name and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            ctx.fail(f"no such command '{name}'{hint}")
        return super().resolve_command(ctx, args)


def _missing(name):
    @click.command(name=name, help=COMMANDS[name][1])
    def cmd():
        raise click.ClickException(f"'{name}' is not available in this build of optkit")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="optkit")
def cli():
    """optkit: make Keras vision models small and fast, and prove each gain with numbers.

    Run `optkit optimize` with no arguments for the embedded demo.
    """


def main(argv=None):
    """Console entry point: user errors are one line on stderr and an exit code, never a traceback.

    stderr (this process's and its children's) passes through optkit.console's filter, which
    drops TensorFlow's C++ log lines, converter prints and library warnings (OPTKIT_DEBUG=1 keeps them)."""
    from optkit import console

    try:
        with console.filtered_stderr():
            return _main(argv)
    except SystemExit as exc:
        if exc.code == 130 and "tensorflow" in sys.modules:
            # Interrupted: what must be kept is written. Tearing TensorFlow down (its thread pools,
            # atexit hooks) can take seconds on a loaded machine; the user asked to stop now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise


def _main(argv):
    try:
        rv = cli.main(args=argv, prog_name="optkit", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C (KeyboardInterrupt) into Abort; a declined prompt is an Abort too.
        ctrl_c = isinstance(exc.__context__, KeyboardInterrupt)
        click.echo("optkit: interrupted" if ctrl_c else "optkit: aborted", err=True)
        return _exit(130)
    except click.ClickException as exc:
        # Usage errors (exit 2) and ClickException (exit 1) keep click's own message.
        exc.show()
        return _exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        return _exit(exc.exit_code)
    except OptkitError as exc:
        click.echo(f"optkit: error: {_one_line(exc)}", err=True)
        return _exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("optkit: interrupted", err=True)
        return _exit(130)
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if os.environ.get("OPTKIT_DEBUG"):
            raise
        click.echo(f"optkit: internal error: {type(exc).__name__}: {_one_line(exc)} "
                   "(set OPTKIT_DEBUG=1 for the traceback)", err=True)
        return _exit(1)
    return _exit(rv if isinstance(rv, int) else 0)


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text[:500] + ("…" if len(text) > 500 else "")


def _exit(code):
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
