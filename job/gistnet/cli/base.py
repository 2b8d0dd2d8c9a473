"""What every ``gistnet`` command shares: the Click group, logging, the flag helpers, and the
rule that a user mistake becomes one line on stderr and a documented exit code."""

from __future__ import annotations

import functools
import logging
import sys

import click

import gistnet
from gistnet import config as config_mod
from gistnet import errors
from gistnet.errors import GistnetError

log = logging.getLogger("gistnet")


def other_rank(environ=None) -> int | None:
    """Under torchrun, this process's rank when it is not rank 0 (None: rank 0 or one process)."""
    import os

    environ = os.environ if environ is None else environ
    try:
        size, rank = int(environ.get("WORLD_SIZE") or 1), int(environ.get("RANK") or 0)
    except ValueError:
        return None  # distributed.world_from_env refuses it with one line later
    return rank if size > 1 and rank > 0 else None

class ThirdPartyOneLine(logging.Filter):
    """Another library's record (pydicom, PIL, a ``warnings.warn`` through ``py.warnings``) as one
    line at WARNING: its traceback cut to the exception's own line, its ERROR lowered (the object
    it is about is skipped and listed; a run that goes on has no error), a warning that pydicom
    also logged (``warn_and_log``) said once. gistnet's own records pass as they are."""

    def __init__(self):
        super().__init__()
        self._recent: list[str] = []  # the last third-party messages, to drop a warning's echo

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gistnet" or record.name.startswith("gistnet."):
            return True
        text = record.getMessage()
        if record.name == "py.warnings":  # "<file>:<line>: <Category>: <text>\n  <source line>"
            first = text.splitlines()[0] if text else ""
            where, _, rest = first.partition(": ")
            category, _, message = rest.partition(": ")
            if message in self._recent:
                return False
            text = f"{category}: {message} ({where.rpartition('site-packages/')[2]})" if message else first
        elif record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if str(exc) not in text:
                text = f"{text}: {type(exc).__name__}: {exc}"
        self._recent = (self._recent + [record.getMessage()])[-32:]
        record.msg, record.args = " ".join(text.split()), ()
        record.exc_info = record.exc_text = record.stack_info = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with -v) on stderr. Under torchrun only rank 0 logs INFO: the other ranks
    train in step with it and would repeat every line, so they log WARNING and above, each
    line prefixed with its rank. Other libraries log WARNING and above, and Python warnings
    too, each as one line in this format (``ThirdPartyOneLine``)."""
    rank = other_rank()
    level = logging.DEBUG if verbose else logging.INFO if rank is None else logging.WARNING
    prefix = "" if rank is None else f"rank {rank}: "
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s: {prefix}%(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ThirdPartyOneLine())
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger, not raw lines on stderr
    # pydicom at DEBUG would log element values (patient data): never below WARNING
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL", "onnxscript", "onnx_ir",
                  "torch.onnx", "pydicom", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

RESUME_HINT = "re-run the same command with the same --run-id to resume from the last checkpoint"

DEMO_RESTART_HINT = "gistnet demo starts over when re-run (it always trains from scratch)"

def user_errors(fn=None, *, after_interrupt: str = RESUME_HINT):
    """Turn a GistnetError into one line on stderr and its exit code; bugs keep their traceback.
    An interruption (SIGTERM, Ctrl-C) says what re-running the command will do."""
    if fn is None:
        return functools.partial(user_errors, after_interrupt=after_interrupt)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except errors.Interrupted as exc:
            if other_rank() is None:  # every rank stopped after the same epoch: rank 0's line says it for all
                click.echo(f"gistnet: {exc.kind}: {exc}; {after_interrupt}", err=True)
            sys.exit(exc.exit_code)
        except GistnetError as exc:
            click.echo(f"gistnet: {_rank()}{exc.kind}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(f"gistnet: {_rank()}interrupted (Ctrl-C); {after_interrupt}", err=True)
            sys.exit(errors.EXIT_CTRL_C)

    return wrapper

def _rank() -> str:
    rank = other_rank()
    return "" if rank is None else f"rank {rank}: "

def _resolve(config_file, flags: dict) -> config_mod.Config:
    from gistnet.observe.tracking import check_uri

    cfg = config_mod.load_config(config_file, flags)
    check_uri(cfg.tracking)  # user:password@ in the tracking URI: exit 3, as the chart refuses it
    return cfg

class OneLineUsageGroup(click.Group):
    """The ``gistnet`` group: a bad flag value, an unknown flag or command is a user mistake like
    any other, so it prints one line ``gistnet: usage error: ...`` (naming the flag and the
    command's ``--help``) and exits 2, not Click's usage block. Help, ``--version`` and a bare
    ``gistnet`` (which shows the help) stay Click's."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            message = " ".join(exc.format_message().split())
            click.echo(f"gistnet: usage error: {message}{where}", err=True)
            sys.exit(errors.EXIT_USAGE)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # Click returns a command's value, or the code of ``ctx.exit(code)``/``--version``; the
        # commands return None, so this exits as Click's standalone mode would.
        sys.exit(code if isinstance(code, int) else 0)

@click.group(cls=OneLineUsageGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(gistnet.__version__, prog_name="gistnet")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Train and audit EUS image classifiers: GIST vs leiomyoma with ResNet-34 and ResNet-50."""
    setup_logging(verbose)
    if click.get_current_context().invoked_subcommand not in SIGTERM_HANDLED:
        gistnet.release_early_signals()

# Commands that act on a SIGTERM caught while starting (``gistnet.hold_early_signals``): the
# training ones stop before training and exit 8, launch exits 8 before starting torchrun.
SIGTERM_HANDLED = ("train", "demo", "launch")

def _default(dotted: str) -> str:
    """The config default of a key, as help text: ``[default: 200, train.epochs]``."""
    section, key = dotted.split(".")
    value = config_mod.Config().to_dict()[section][key]
    shown = ",".join(value) if isinstance(value, list) else "false" if value is False else value
    return f"[default: {'none' if shown == '' else shown}; {dotted}]"

def _option(flag: str, dotted: str, text: str, *names: str, **kwargs):
    """A train/config flag whose help shows the key it sets and its default (the flag itself
    defaults to None, so the environment and the YAML file still apply)."""
    return click.option(flag, *names, help=f"{text} {_default(dotted)}", **kwargs)

def train_options(fn):
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="YAML config file. [default: $GISTNET_CONFIG, else none]"),
        _option("--data", "data.uri", "Data URI: a folder or s3://bucket/prefix with <class>/<image>."),
        _option("--output", "output.uri", "Output URI; the run writes under <output>/<run-id>/."),
        _option("--run-id", "output.run_id", "Run id (none: the UTC start time). Re-using one resumes that run."),
        _option("--models", "train.models", "Comma-separated: resnet34,resnet50."),
        _option("--epochs", "train.epochs", "Epochs per model.", type=int),
        _option("--batch-size", "train.batch_size", "Images per step (>= 2; the last partial batch of an epoch "
                "is dropped).", type=int),
        _option("--image-size", "data.image_size", "Square image side in pixels.", type=int),
        _option("--seed", "train.seed", "Seed of the split, initial weights, batch order and augmentation.",
                type=int),
        _option("--device", "train.device", "Training device.", type=click.Choice(["auto", "cpu", "cuda"])),
        _option("--augmentation", "augmentation.mode", "Augmentation mode.",
                type=click.Choice(["paper", "online", "none"])),
        _option("--split", "split.method", "holdout (the paper's 8:2), kfold cross-validation, or site "
                "(leave-one-site-out; manifest.csv's site column).", "split_method",
                type=click.Choice(["holdout", "kfold", "site"])),
        _option("--folds", "split.folds", "Number of folds for --split kfold (>= 2).", type=int),
        _option("--ci", "evaluate.ci_method", "Confidence interval method.", "ci_method",
                type=click.Choice(config_mod.CI_METHODS)),
        _option("--compile", "train.compile", "Training step: auto (CUDA graphs on a GPU, eager on CPU), off, "
                "default, reduce-overhead.", "compile_mode", type=click.Choice(config_mod.COMPILE_SETTINGS)),
        _option("--checkpoint-every", "train.checkpoint_every", "Checkpoint every N epochs (0: only at the "
                "end/SIGTERM).", type=int),
        _option("--metrics-port", "metrics.port", "Serve Prometheus /metrics on this port (0: off).", type=int),
        _option("--pushgateway", "metrics.pushgateway", "Pushgateway URL for the final push."),
        click.option("--force", is_flag=True, default=None,
                     help=f"Run again even if this run id is complete. {_default('output.force')}"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn

FLAG_KEYS = {
    "data": "data.uri", "output": "output.uri", "run_id": "output.run_id", "models": "train.models",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "image_size": "data.image_size",
    "seed": "train.seed", "device": "train.device", "augmentation": "augmentation.mode",
    "ci_method": "evaluate.ci_method", "split_method": "split.method", "folds": "split.folds",
    "checkpoint_every": "train.checkpoint_every", "compile_mode": "train.compile",
    "metrics_port": "metrics.port", "pushgateway": "metrics.pushgateway", "force": "output.force",
}

def _flags(kwargs: dict) -> dict:
    return {FLAG_KEYS[k]: v for k, v in kwargs.items() if k in FLAG_KEYS and v is not None}

def _warn_unknown_env() -> None:
    import os

    for name in config_mod.unknown_env(os.environ):
        log.warning("ignoring %s: not a gistnet config key (see docs/configuration.md)", name)

def _storage_and_metrics(config_file, metrics_port, pushgateway) -> config_mod.Config:
    """Storage and metrics settings for predict/export (flags > GISTNET_* env > YAML);
    what a model computes comes from its run's saved config.yaml, never from here."""
    _warn_unknown_env()
    flags = {"metrics.port": metrics_port, "metrics.pushgateway": pushgateway}
    return _resolve(config_file, {k: v for k, v in flags.items() if v is not None})

MODEL_CHOICE = click.Choice([*config_mod.MODEL_NAMES, "best"])
