"""Commands that use a finished run: predict, evaluate (external data), export and promote."""

from __future__ import annotations

import click

from gistnet import config as config_mod
from gistnet import errors
from gistnet.cli.base import MODEL_CHOICE, _resolve, _storage_and_metrics, cli, user_errors
from gistnet.evidence import stats


RUN_HELP = "The finished run: <output>/<run-id> (folder or s3://), or production: the promoted model of --registry."
REGISTRY_HELP = "With --run production: the registry holding production.json."


@cli.command("predict")
@click.option("--run", "run_uri", required=True, help=RUN_HELP)
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--model", default="best", show_default=True, type=MODEL_CHOICE,
              help="Which of the run's models; best: the report's best_model.")
@click.option("--data", required=True, help="Images to score: a folder or s3://bucket/prefix (class folders optional).")
@click.option("--output", required=True, help="Where predictions.csv and predictions.json go.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass [default: the run's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), help="Call positive at P >= X [default: the run's, 0.5].")
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: <model>/model.onnx (gistnet export) under ONNX Runtime.")
@click.option("--include-development", is_flag=True,
              help="Also report metrics on the run's own training and validation images, apart and marked as "
                   "not an evaluation (they are always left out of the metrics).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage, metrics).")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off).")
@click.option("--pushgateway", help="Pushgateway URL for the final push.")
@user_errors
def predict_cmd(run_uri, registry, model, data, output, batch_size, device, threshold, engine, include_development,
                config_file, metrics_port, pushgateway) -> None:
    """Score every image under --data with a finished run's model; write predictions.csv/.json."""
    from gistnet.serving import predict, trained

    cfg = _storage_and_metrics(config_file, metrics_port, pushgateway)
    run_uri, model = trained.resolve(run_uri, model, registry, cfg.storage)
    request = predict.Request(run=run_uri, data=data, output=output, model=model, batch_size=batch_size,
                              device=device, threshold=threshold, engine=engine,
                              include_development=include_development)
    summary = predict.run(request, cfg)
    if summary["evaluation_note"]:
        click.echo(f"metrics {summary['evaluation_note']}", err=True)
    if summary["evaluation"]:
        click.echo(stats.format_table(summary["evaluation"]["metrics"]), err=True)
    if summary["development_evaluation"]:
        click.echo(summary["development_evaluation"]["note"], err=True)
        click.echo(stats.format_table(summary["development_evaluation"]["metrics"]), err=True)
    click.echo(summary["uri"])

@cli.command("evaluate")
@click.option("--run", "run_uri", required=True, help=RUN_HELP)
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--data", required=True, help="A labelled data set from elsewhere: class folders or manifest.csv.")
@click.option("--output", help="Where the evaluation goes [default: <run>/external/<name>].")
@click.option("--name", help="Name of this evaluation [default: the last part of --data].")
@click.option("--model", default="all", show_default=True, type=click.Choice([*config_mod.MODEL_NAMES, "best", "all"]),
              help="Which of the run's models; a k-fold run's models score as fold ensembles.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass [default: the run's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config (storage, metrics, evaluate.subgroups and evaluate.min_subgroup).")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off).")
@click.option("--pushgateway", help="Pushgateway URL for the final push.")
@user_errors
def evaluate_cmd(run_uri, registry, data, output, name, model, batch_size, device, config_file, metrics_port,
                 pushgateway) -> None:
    """Score a labelled external data set with a finished run's models; write report.json/.md/.html."""
    from gistnet.serving import external, trained

    cfg = _storage_and_metrics(config_file, metrics_port, pushgateway)
    if run_uri == trained.PRODUCTION:  # the promoted model alone, unless --model names another of its run
        run_uri, model = trained.resolve(run_uri, "best" if model == "all" else model, registry, cfg.storage)
    given = {k: getattr(cfg.evaluate, k) for s, k in config_mod.given_keys(config_file) if s == "evaluate"}
    summary = external.run(external.Request(run=run_uri, data=data, output=output, name=name, model=model,
                                            batch_size=batch_size, device=device, evaluate=given), cfg)
    click.echo("\n".join(external.summary_lines(summary["report"])), err=True)
    click.echo(summary["uri"])

@cli.command("export")
@click.option("--run", "run_uri", required=True, help="The finished run: <output>/<run-id> (folder or s3://).")
@click.option("--model", default="best", show_default=True, type=MODEL_CHOICE)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage, tracking).")
@user_errors
def export_cmd(run_uri, model, fmt, config_file) -> None:
    """Export a run's model beside its weights: <model>/model.onnx (dynamic batch) and model.onnx.json.
    With MLflow tracking on, model.onnx is also logged to the run's MLflow run and registered."""
    import tempfile

    from gistnet.ops import record
    from gistnet.serving import export, trained

    cfg = _storage_and_metrics(config_file, None, None)
    chosen = trained.open_run(run_uri, model, cfg.storage)
    export.export_onnx(chosen, tempfile.gettempdir())
    record.log_onnx(run_uri, chosen.name, cfg, tempfile.gettempdir())  # MLflow, when tracking is on
    click.echo(chosen.run.uri_of(chosen.key(export.ONNX_FILE)))


@cli.command("promote")
@click.option("--run", "run_uri", required=True, help="The finished challenger run: <output>/<run-id>.")
@click.option("--registry", help="Where production.json lives (folder or s3://) [default: promotion.registry].")
@click.option("--data", "promotion_data", help="The locked promotion set [default: promotion.data].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (promotion, storage, "
              "tracking, metrics).")
@user_errors
def promote_cmd(run_uri, registry, promotion_data, config_file) -> None:
    """Champion/challenger gate: promote the run's best model if it is non-inferior to production.
    Exit 11 (with the reason) when refused; promotion.json beside the run holds the evidence."""
    from gistnet.ops import promotion

    flags = {"promotion.data": promotion_data, "promotion.registry": registry}
    cfg = _resolve(config_file, {k: v for k, v in flags.items() if v is not None})
    if not cfg.promotion.registry:
        raise errors.ConfigError("no registry: pass --registry or set promotion.registry")
    record = promotion.gate(run_uri, cfg.promotion.registry, cfg)
    click.echo(f"promoted: {record['reason']}", err=True)
    click.echo(record["pointer"]["evidence"])


@cli.command("readers")
@click.option("--readers", "readers_uri", required=True,
              help="The readers file: a CSV, local or s3://bucket/key (case, reader[, modality, rating, call, truth, "
                   "patient_id, lesion_id]; docs/reader-study.md).")
@click.option("--run", "run_uri", help=RUN_HELP + " With --data, the model joins the study.")
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--data", help="With --run: the data set whose images are the cases (their keys are the case ids).")
@click.option("--output", help="Where readers.json/.md/.html go [default: <run>/readers; required without --run].")
@click.option("--model", default="best", show_default=True, type=MODEL_CHOICE, help="Which of the run's models.")
@click.option("--covariance", type=click.Choice(["jackknife", "delong"]), default="jackknife", show_default=True,
              help="How the covariances of the reader AUCs over cases are estimated (Obuchowski-Rockette).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass [default: the run's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config (storage, metrics; data.positive_class and evaluate.ci_method without --run).")
@user_errors
def readers_cmd(readers_uri, run_uri, registry, data, output, model, covariance, batch_size, device,
                config_file) -> None:
    """A reader study: each reader, modalities compared (Obuchowski-Rockette, Hillis), and with --run and --data
    the model against the readers. Writes readers.json/.md/.html and readers_roc.png."""
    from gistnet.serving import readers, trained

    cfg = _storage_and_metrics(config_file, None, None)
    if run_uri == trained.PRODUCTION:
        run_uri, model = trained.resolve(run_uri, model, registry, cfg.storage)
    done = readers.run(readers.Request(readers=readers_uri, output=output, run=run_uri, data=data, model=model,
                                       batch_size=batch_size, device=device, covariance=covariance), cfg)
    for line in readers.summary_lines(done["document"]):
        click.echo(line, err=True)
    click.echo(done["uri"])
