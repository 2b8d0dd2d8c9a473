"""Stand-alone tools: bench, stats and exit-codes."""

from __future__ import annotations

import json

import click

from gistnet import config as config_mod
from gistnet import errors
from gistnet.cli.base import cli, user_errors
from gistnet.evidence import stats


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
    from gistnet.training import bench, train

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
