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
from gistnet import errors
from gistnet.evidence import stats
from gistnet.errors import GistnetError

log = logging.getLogger("gistnet")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S",
                        force=True)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL", "onnxscript", "onnx_ir",
                  "torch.onnx"):
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
            click.echo(f"gistnet: {exc.kind}: {exc}; {after_interrupt}", err=True)
            sys.exit(exc.exit_code)
        except GistnetError as exc:
            click.echo(f"gistnet: {exc.kind}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(f"gistnet: interrupted (Ctrl-C); {after_interrupt}", err=True)
            sys.exit(errors.EXIT_CTRL_C)

    return wrapper


def _resolve(config_file, flags: dict) -> config_mod.Config:
    return config_mod.load_config(config_file, flags)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(gistnet.__version__, prog_name="gistnet")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Train and audit EUS image classifiers: GIST vs leiomyoma with ResNet-34 and ResNet-50."""
    setup_logging(verbose)


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
        _option("--split", "split.method", "holdout (the paper's 8:2) or kfold cross-validation.", "split_method",
                type=click.Choice(["holdout", "kfold"])),
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


def _run_training(cfg: config_mod.Config, fold: str | None = None, model: str | None = None):
    from gistnet import pipeline
    from gistnet.evidence import report

    for key, label in (("data", cfg.data.uri), ("output", cfg.output.uri)):
        if not label:
            raise errors.ConfigError(f"no {key} URI: pass --{key} or set {key}.uri in the config")
    outcome = pipeline.run(cfg, fold=fold, model=model)
    if outcome.report is None:
        click.echo(f"{outcome.uri}/ (this process's part is done; the process that finishes the last (fold, "
                   "model) unit writes the report, or run gistnet aggregate --run on it)")
        return outcome
    if not outcome.already_complete:
        click.echo(report.summary(outcome.report), err=True)
    click.echo(f"{outcome.uri}/report.json")
    return outcome


@cli.command("train")
@train_options
@click.option("--fold", help="Train only this fold (0..folds-1) of a --split kfold run; several processes "
                             "with the same --run-id may train different folds. 'auto': the (fold, model) "
                             "unit JOB_COMPLETION_INDEX names (fold = index % folds, model = index // folds; "
                             "a Kubernetes Indexed Job). [default: all folds]")
@click.option("--model", help="Train only this one of train.models (with --fold: one (fold, model) unit); "
                              "processes with the same --run-id may train different ones. [default: all]")
@user_errors
def train_cmd(config_file, fold, model, **kwargs) -> None:
    """Train both ResNets on --data and write checkpoints and report.json to --output.

    The defaults reproduce the paper: 200 epochs at 224 px for each of two ResNets. On a GPU
    that takes minutes; on a CPU it runs for many hours. To try gistnet on a CPU, use
    `gistnet demo` or e.g. --epochs 3 --image-size 64.

    Each flag overrides its config key (shown with its default); precedence:
    flag > GISTNET_* environment > --config YAML > default."""
    _warn_unknown_env()
    _run_training(_resolve(config_file, _flags(kwargs)), fold, model)


@cli.command("aggregate")
@click.option("--run", "run_uri", required=True, help="The run's URI: <output>/<run-id> (folder or s3://).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage settings).")
@user_errors
def aggregate_cmd(run_uri, config_file) -> None:
    """Pool every finished fold of a run into its report; missing folds are named in it."""
    from gistnet import pipeline
    from gistnet.evidence import report

    outcome = pipeline.aggregate(run_uri, _resolve(config_file, {}))
    click.echo(report.summary(outcome.report), err=True)
    if outcome.report["status"] != "complete":
        missing = ", ".join(report.unit_name(u) for u in outcome.report["evaluation"]["missing"])
        click.echo(f"gistnet: warning: partial report, missing {missing}", err=True)
    click.echo(f"{outcome.uri}/report.json")


@cli.command("promote")
@click.option("--run", "run_uri", required=True, help="The finished challenger run: <output>/<run-id>.")
@click.option("--registry", help="Where production.json lives (folder or s3://) [default: promotion.registry].")
@click.option("--data", "promotion_data", help="The locked promotion set [default: promotion.data].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (promotion, storage, "
              "tracking, metrics).")
@user_errors
def promote_cmd(run_uri, registry, promotion_data, config_file) -> None:
    """Champion/challenger gate: promote the run's best model if it is non-inferior to production.
    Exit 10 (with the reason) when refused; promotion.json beside the run holds the evidence."""
    from gistnet.ops import promotion

    flags = {"promotion.data": promotion_data, "promotion.registry": registry}
    cfg = _resolve(config_file, {k: v for k, v in flags.items() if v is not None})
    if not cfg.promotion.registry:
        raise errors.ConfigError("no registry: pass --registry or set promotion.registry")
    record = promotion.gate(run_uri, cfg.promotion.registry, cfg)
    click.echo(f"promoted: {record['reason']}", err=True)
    click.echo(record["pointer"]["evidence"])


@cli.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@user_errors
def launch_cmd(command) -> None:
    """Run `torchrun -m gistnet COMMAND...` from the PET_* environment (the Helm chart's
    distributed modes): wait for the master first, exit with the first failed rank's code."""
    from gistnet.training import distributed

    wait = config_mod.load_config(None).distributed.master_wait_s
    sys.exit(distributed.launch(list(command), wait))


@cli.command("config")
@train_options
@user_errors
def config_cmd(config_file, **kwargs) -> None:
    """Print the resolved configuration (flags > GISTNET_* env > YAML > defaults) as YAML."""
    _warn_unknown_env()
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
    from gistnet.data import synth
    from gistnet.data.storage import open_store

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
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--folds", type=int, help="k-fold cross-validation with this many folds [default: the hold-out].")
@user_errors(after_interrupt=DEMO_RESTART_HINT)
def demo_cmd(output, epochs, image_size, models, device, folds) -> None:
    """Synthesize a data set, train both ResNets on it and write the report: no bucket needed.

    The demo always starts its run over (--force): re-running it after an interruption trains
    from scratch. To resume instead, run `gistnet train` on the demo's data with a --run-id."""
    from gistnet.data import synth
    from gistnet.data.storage import LocalStore

    root = Path(output)
    data = root / "data"
    if not (data / "synth.json").exists():
        synth.write_dataset(LocalStore(data), 69, 73, image_size, seed=0)
    cfg = config_mod.load_config(None, {"data.uri": str(data), "output.uri": str(root / "runs"),
                                        "output.run_id": "demo", "train.epochs": epochs,
                                        "data.image_size": image_size, "train.models": models,
                                        "output.force": True, "train.device": device,
                                        **({"split.method": "kfold", "split.folds": folds} if folds is not None else {})})
    outcome = _run_training(cfg)
    weights = "folds/<i>/<model>/model.safetensors" if folds is not None else "<model>/model.safetensors"
    click.echo(f"demo outputs: {outcome.uri} (report.html: open it in a browser; report.json, checklist.md, "
               f"predictions.csv, training_curves.png, roc.png, reliability.png, gradcam-<model>.png, {weights})",
               err=True)


def _storage_and_metrics(config_file, metrics_port, pushgateway) -> config_mod.Config:
    """Storage and metrics settings for predict/export (flags > GISTNET_* env > YAML);
    what a model computes comes from its run's saved config.yaml, never from here."""
    _warn_unknown_env()
    flags = {"metrics.port": metrics_port, "metrics.pushgateway": pushgateway}
    return _resolve(config_file, {k: v for k, v in flags.items() if v is not None})


MODEL_CHOICE = click.Choice([*config_mod.MODEL_NAMES, "best"])


@cli.command("predict")
@click.option("--run", "run_uri", required=True, help="The finished run: <output>/<run-id> (folder or s3://), or "
              "production: the promoted model of --registry.")
@click.option("--registry", help="With --run production: the registry holding production.json.")
@click.option("--model", default="best", show_default=True, type=MODEL_CHOICE,
              help="Which of the run's models; best: the report's best_model.")
@click.option("--data", required=True, help="Images to score: a folder or s3://bucket/prefix (class folders optional).")
@click.option("--output", required=True, help="Where predictions.csv and predictions.json go.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass [default: the run's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), help="Call positive at P >= X [default: the run's, 0.5].")
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: <model>/model.onnx (gistnet export) under ONNX Runtime.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage, metrics).")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off).")
@click.option("--pushgateway", help="Pushgateway URL for the final push.")
@user_errors
def predict_cmd(run_uri, registry, model, data, output, batch_size, device, threshold, engine, config_file,
                metrics_port, pushgateway) -> None:
    """Score every image under --data with a finished run's model; write predictions.csv/.json."""
    from gistnet.serving import predict, trained

    cfg = _storage_and_metrics(config_file, metrics_port, pushgateway)
    run_uri, model = trained.resolve(run_uri, model, registry, cfg.storage)
    request = predict.Request(run=run_uri, data=data, output=output, model=model, batch_size=batch_size,
                              device=device, threshold=threshold, engine=engine)
    summary = predict.run(request, cfg)
    if summary["evaluation"]:
        click.echo(stats.format_table(summary["evaluation"]["metrics"]), err=True)
    click.echo(summary["uri"])


@cli.command("export")
@click.option("--run", "run_uri", required=True, help="The finished run: <output>/<run-id> (folder or s3://).")
@click.option("--model", default="best", show_default=True, type=MODEL_CHOICE)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage).")
@user_errors
def export_cmd(run_uri, model, fmt, config_file) -> None:
    """Export a run's model beside its weights: <model>/model.onnx (dynamic batch) and model.onnx.json."""
    import tempfile

    from gistnet.serving import export
    from gistnet.serving import trained

    cfg = _storage_and_metrics(config_file, None, None)
    chosen = trained.open_run(run_uri, model, cfg.storage)
    export.export_onnx(chosen, tempfile.gettempdir())
    click.echo(chosen.run.uri_of(chosen.key(export.ONNX_FILE)))


@cli.command("bench")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--models", default="resnet34,resnet50", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="Timed steps per measurement.")
@click.option("--warmup", type=click.IntRange(min=1), default=5, show_default=True, help="Untimed steps first.")
@click.option("--workers", type=click.IntRange(min=0), default=8, show_default=True,
              help="DataLoader workers of the torchvision reference pipeline.")
@click.option("--compile", "compile_mode", type=click.Choice(config_mod.COMPILE_SETTINGS), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per measurement (name, img_per_s, ...).")
@user_errors
def bench_cmd(device, models, batch_size, image_size, steps, warmup, workers, compile_mode, as_json) -> None:
    """Training img/s on this machine: (a) model only, (b) gistnet's step, (c) a torchvision reference."""
    from gistnet.training import bench
    from gistnet.training import train

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    config_mod.check_model_names(names, "--models")
    settings = bench.BenchSettings(train.resolve_device(device), names, batch_size, image_size, steps, warmup,
                                   workers, compile_mode)
    if not as_json:
        click.echo(bench.HEADER)
    for record in bench.run(settings):  # each line as soon as it is measured
        click.echo(json.dumps(record) if as_json else bench.format_row(record))


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
