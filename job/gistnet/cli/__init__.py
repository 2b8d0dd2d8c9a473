"""The ``gistnet`` command: base (the group, shared flags, one-line errors), run, model and tools commands.
May import: everything below it (pipeline and every subpackage); nothing imports the CLI."""

from gistnet.cli import model, run, tools  # noqa: F401 - importing registers the commands
from gistnet.cli.base import FLAG_KEYS, cli, other_rank, setup_logging, user_errors  # noqa: F401
from gistnet.cli.model import evaluate_cmd, export_cmd, predict_cmd, readers_cmd  # noqa: F401
from gistnet.cli.run import train_cmd  # noqa: F401


def main() -> None:
    cli(prog_name="gistnet")


if __name__ == "__main__":
    main()
