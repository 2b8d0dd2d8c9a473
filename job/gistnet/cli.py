"""The ``gistnet`` command. It parses flags, resolves the config and hands over to the
stage modules; user mistakes become one line on stderr and a documented exit code."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import click

import gistnet
from gistnet import config as config_mod
from gistnet import errors, stats
from gistnet.errors import GistnetError

log = logging.getLogger("gistnet")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S",
                        force=True)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors(fn):
    """Turn a GistnetError into one line on stderr and its exit code; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GistnetError as exc:
            click.echo(f"gistnet: {exc.kind}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("gistnet: interrupted (Ctrl-C); re-run the same command with the same --run-id to resume "
                       "from the last checkpoint", err=True)
            sys.exit(130)

    return wrapper


def _resolve(config_file, flags: dict) -> config_mod.Config:
    return config_mod.load_config(config_file, flags)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(gistnet.__version__, prog_name="gistnet")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Train and audit EUS image classifiers: GIST vs leiomyoma with ResNet-34 and ResNet-50."""
    setup_logging(verbose)


def train_options(fn):
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file."),
        click.option("--data", help="Data URI: a folder or s3://bucket/prefix with <class>/<image>."),
        click.option("--output", help="Output URI; the run writes under <output>/<run-id>/."),
        click.option("--run-id", help="Run id (default: UTC timestamp). Re-using one resumes that run."),
        click.option("--models", help="Comma-separated: resnet34,resnet50."),
        click.option("--epochs", type=int), click.option("--batch-size", type=int),
        click.option("--image-size", type=int), click.option("--seed", type=int),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--augmentation", type=click.Choice(["paper", "online", "none"]), help="Augmentation mode."),
        click.option("--ci", "ci_method", type=click.Choice(config_mod.CI_METHODS), help="Confidence interval method."),
        click.option("--checkpoint-every", type=int, help="Checkpoint every N epochs (0: only at the end/SIGTERM)."),
        click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off)."),
        click.option("--pushgateway", help="Pushgateway URL for the final push."),
        click.option("--force", is_flag=True, default=None, help="Run again even if this run id is complete."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


FLAG_KEYS = {
    "data": "data.uri", "output": "output.uri", "run_id": "output.run_id", "models": "train.models",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "image_size": "data.image_size",
    "seed": "train.seed", "device": "train.device", "augmentation": "augmentation.mode",
    "ci_method": "evaluate.ci_method", "checkpoint_every": "train.checkpoint_every",
    "metrics_port": "metrics.port", "pushgateway": "metrics.pushgateway", "force": "output.force",
}


def _flags(kwargs: dict) -> dict:
    return {FLAG_KEYS[k]: v for k, v in kwargs.items() if k in FLAG_KEYS and v is not None}


def _warn_unknown_env() -> None:
    import os

    for name in config_mod.unknown_env(os.environ):
        log.warning("ignoring %s: not a gistnet config key (see docs/configuration.md)", name)


def _run_training(cfg: config_mod.Config):
    from gistnet import pipeline, report

    for key, label in (("data", cfg.data.uri), ("output", cfg.output.uri)):
        if not label:
            raise errors.ConfigError(f"no {key} URI: pass --{key} or set {key}.uri in the config")
    outcome = pipeline.run(cfg)
    if outcome.report and not outcome.already_complete:
        click.echo(report.summary(outcome.report), err=True)
    click.echo(f"{outcome.uri}/report.json")
    return outcome


@cli.command("train")
@train_options
@user_errors
def train_cmd(config_file, **kwargs) -> None:
    """Train both ResNets on --data and write checkpoints and report.json to --output."""
    _warn_unknown_env()
    _run_training(_resolve(config_file, _flags(kwargs)))


@cli.command("config")
@train_options
@user_errors
def config_cmd(config_file, **kwargs) -> None:
    """Print the resolved configuration (flags > GISTNET_* env > YAML > defaults) as YAML."""
    click.echo(_resolve(config_file, _flags(kwargs)).to_yaml(), nl=False)


@cli.command("synth")
@click.option("--output", required=True, help="Where to write <class>/<image>.png: folder or s3://bucket/prefix.")
@click.option("--n-gist", type=click.IntRange(min=0), default=69, show_default=True)
@click.option("--n-lm", type=click.IntRange(min=0), default=73, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage and class names).")
@user_errors
def synth_cmd(output, n_gist, n_lm, image_size, seed, config_file) -> None:
    """Write a synthetic EUS-like data set (Table 1 of the paper drives each class)."""
    from gistnet import synth
    from gistnet.storage import open_store

    cfg = config_mod.load_config(config_file)
    store = open_store(output, cfg.storage)
    started = time.perf_counter()
    synth.write_dataset(store, n_gist, n_lm, image_size, seed, (cfg.data.positive_class, cfg.data.negative_class))
    log.info("wrote %d synthetic images in %.1fs", n_gist + n_lm, time.perf_counter() - started)
    click.echo(store.uri)


@cli.command("demo")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Local folder for data and run.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32), default=64, show_default=True)
@click.option("--models", default="resnet34,resnet50", show_default=True)
@user_errors
def demo_cmd(output, epochs, image_size, models) -> None:
    """Synthesize a data set, train both ResNets on it and write the report: no bucket needed."""
    from gistnet import synth
    from gistnet.storage import LocalStore

    root = Path(output)
    data = root / "data"
    if not (data / "synth.json").exists():
        synth.write_dataset(LocalStore(data), 69, 73, image_size, seed=0)
    cfg = config_mod.load_config(None, {"data.uri": str(data), "output.uri": str(root / "runs"),
                                        "output.run_id": "demo", "train.epochs": epochs,
                                        "data.image_size": image_size, "train.models": models,
                                        "output.force": True, "train.device": "auto"})
    outcome = _run_training(cfg)
    click.echo(f"demo outputs: {outcome.uri} (report.json, training_curves.png, roc.png, "
               f"augmentation_examples.png, <model>/model.safetensors)", err=True)


@cli.command("stats")
@click.option("--tp", type=click.IntRange(min=0), required=True)
@click.option("--fp", type=click.IntRange(min=0), required=True)
@click.option("--tn", type=click.IntRange(min=0), required=True)
@click.option("--fn", type=click.IntRange(min=0), required=True)
@click.option("--ci", "ci_method", type=click.Choice(config_mod.CI_METHODS), default="wilson", show_default=True)
@click.option("--level", type=click.FloatRange(0.5, 1, min_open=True, max_open=True), default=0.95, show_default=True)
def stats_cmd(tp, fp, tn, fn, ci_method, level) -> None:
    """Diagnostic table (sensitivity, specificity, PPV, NPV, accuracy) for a confusion matrix, as JSON."""
    table = {"confusion_matrix": {"tp": tp, "fp": fp, "tn": tn, "fn": fn}, "ci_method": ci_method,
             "confidence_level": level, "metrics": stats.diagnostic_table(tp, fp, tn, fn, ci_method, level)}
    click.echo(json.dumps(table, indent=2))


@cli.command("exit-codes")
def exit_codes_cmd() -> None:
    """Print the table of exit codes."""
    for code, meaning in errors.EXIT_CODES.items():
        click.echo(f"{code}\t{meaning}")


def main() -> None:
    cli(prog_name="gistnet")


if __name__ == "__main__":
    main()
