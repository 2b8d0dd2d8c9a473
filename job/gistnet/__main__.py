import gistnet

gistnet.hold_early_signals()  # before the imports below, which take seconds: a SIGTERM then stops cleanly (exit 8)

from gistnet.cli import main  # noqa: E402

main()
