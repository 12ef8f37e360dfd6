"""Error types that the CLI turns into exit codes.

Library code raises these; optkit.cli prints `optkit: error: <message>` on one line of stderr
and exits with the code below. Anything else that escapes is a bug and is reported the same
way (exit 1) unless OPTKIT_DEBUG=1 asks for the traceback.
"""


class OptkitError(Exception):
    """Base class. `exit_code` follows the CLI contract in DESIGN.md."""

    exit_code = 1


class UserError(OptkitError):
    """Bad input from the user: a missing/corrupt file, a wrong option, shapes that cannot match."""

    exit_code = 2


class RunFailure(OptkitError):
    """A variant, export or validation failed (exit 1)."""

    exit_code = 1


class Regression(OptkitError):
    """The latency gate found a regression (exit 3)."""

    exit_code = 3


class Unavailable(OptkitError):
    """A runtime or converter that cannot run on this machine (no GPU, not macOS, not installed).

    Inside `optimize` these become `skipped: <reason>` rows; on their own commands they exit 1.
    """

    exit_code = 1
