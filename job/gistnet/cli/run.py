"""Commands that make a run: train, aggregate, launch, config, synth and demo."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from gistnet import config as config_mod
from gistnet import errors
from gistnet.cli.base import (
    DEMO_RESTART_HINT,
    _flags,
    _resolve,
    _warn_unknown_env,
    cli,
    log,
    other_rank,
    train_options,
    user_errors,
)


def _run_training(cfg: config_mod.Config, fold: str | None = None, model: str | None = None):
    from gistnet import pipeline
    from gistnet.evidence import report

    from gistnet.observe.tracking import check_uri

    for key, label in (("data", cfg.data.uri), ("output", cfg.output.uri)):
        if not label:
            raise errors.ConfigError(f"no {key} URI: pass --{key} or set {key}.uri in the config")
    check_uri(cfg.tracking)  # gistnet demo resolves its config without _resolve
    outcome = pipeline.run(cfg, fold=fold, model=model)
    if outcome.report is None:
        if other_rank() is not None:  # trained in step with rank 0, which writes the report and says where
            return outcome
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

LESION_TYPES = ("GIST", "LM", "schwannoma", "NET", "ectopic_pancreas")  # synth_classes.TYPES, without importing numpy
SYNTH_PER_CLASS = 60  # images per type of gistnet synth --classes and gistnet demo --classes


def _lesion_types(ctx, param, value):
    """--classes: the comma-separated lesion types, each known and named once."""
    if value is None:
        return None
    from gistnet.data.synth_classes import check_types

    try:
        return check_types(v.strip() for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None

@cli.command("synth")
@click.option("--output", required=True, help="Where to write <class>/<image>.png: folder or s3://bucket/prefix.")
@click.option("--n-gist", type=click.IntRange(min=0), default=69, show_default=True)
@click.option("--n-lm", type=click.IntRange(min=0), default=73, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "dicom"]), default="png", show_default=True,
              help="dicom: an archive-like mix of DICOM and screenshot PNGs with fake patients (docs/real-data.md).")
@click.option("--sites", type=click.IntRange(min=1), help="Draw K sites, each with its own acquisition effect and "
              "class mix; --n-gist + --n-lm images in all, split evenly; manifest.csv gets patient_id and site.")
@click.option("--readers", "n_readers", type=click.IntRange(min=1), help="Also write readers.csv: N simulated readers "
              "rating every image unaided and aided (gistnet readers; docs/reader-study.md).")
@click.option("--classes", callback=_lesion_types, help="Draw these lesion types instead (comma-separated, any "
              f"subset and order of {','.join(LESION_TYPES)}), each with its EUS appearance, several frames per "
              "lesion; manifest.csv gets patient_id and lesion_id (docs/multiclass.md).")
@click.option("--per-class", type=click.IntRange(min=1), help="Images per type with --classes.  [default: 60]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (storage and class names).")
@user_errors
def synth_cmd(output, n_gist, n_lm, image_size, seed, fmt, sites, n_readers, classes, per_class, config_file) -> None:
    """Write a synthetic EUS-like data set (Table 1 of the paper drives each class)."""
    from gistnet.data import synth, synth_dicom
    from gistnet.data.storage import open_store

    if classes:
        ctx = click.get_current_context()
        given = [flag for flag, name in (("--n-gist", "n_gist"), ("--n-lm", "n_lm"), ("--format", "fmt"),
                                         ("--sites", "sites"), ("--readers", "n_readers"))
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--classes draws --per-class images of each type; it does not combine with "
                                   f"{', '.join(given)}")
    elif per_class is not None:
        raise click.UsageError("--per-class counts the images of each type of --classes; without --classes use "
                               "--n-gist and --n-lm")
    cfg = config_mod.load_config(config_file)
    store = open_store(output, cfg.storage)
    started = time.perf_counter()
    if classes:
        from gistnet.data import synth_classes

        per_class = per_class or SYNTH_PER_CLASS
        synth_classes.write_classes(store, classes, per_class, image_size, seed)
        log.info("wrote %d synthetic images of %s in %.1fs", per_class * len(classes), ", ".join(classes),
                 time.perf_counter() - started)
        click.echo(store.uri)
        return
    names = (cfg.data.positive_class, cfg.data.negative_class)
    if sites and fmt == "dicom":
        raise click.UsageError("--sites draws PNG sites; it does not combine with --format dicom")
    if sites:
        summary = synth.write_sites(store, synth.sites(sites, seed), (n_gist + n_lm) // sites, image_size, seed, names)
    else:
        summary = (synth_dicom if fmt == "dicom" else synth).write_dataset(store, n_gist, n_lm, image_size, seed, names)
    if n_readers:
        _write_readers(store, summary, names[0], n_readers, seed)
    log.info("wrote %d synthetic images in %.1fs", n_gist + n_lm, time.perf_counter() - started)
    click.echo(store.uri)

def _write_readers(store, summary: dict, positive: str, n_readers: int, seed: int, name: str = "readers.csv") -> None:
    """Simulated readers over every image ``summary`` lists (their keys are the cases)."""
    from gistnet.data import synth_readers

    images = summary.get("images") or []
    keys = [r["key"] for r in images]
    truth = [k.split("/")[-2] for k in keys]  # <class>/<image> or <site>/<class>/<image>
    patients = [r.get("patient_id") for r in images]
    text = synth_readers.simulate(keys, truth, positive, n_readers, seed, patients if any(patients) else None)
    store.write_bytes(name, text.encode())

@cli.command("demo")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Local folder for data and run.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32), default=64, show_default=True)
@click.option("--models", default="resnet34,resnet50", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--folds", type=int, help="k-fold cross-validation with this many folds [default: the hold-out].")
@click.option("--split", "split_method", type=click.Choice(["site"]),
              help="site: three synthetic sites, leave-one-site-out cross-validation.")
@click.option("--external", is_flag=True, help="Three synthetic sites: train on two, gistnet evaluate on the third.")
@click.option("--per-site", type=click.IntRange(min=12), default=60, show_default=True,
              help="Images per site with --split site, --external or --readers.")
@click.option("--readers", "n_readers", type=click.IntRange(min=0), default=0, show_default=True,
              help="A reader study: train on sites A and B, then N simulated readers (unaided, aided) and the model "
                   "read site C's images (gistnet readers).")
@click.option("--classes", "n_classes", type=click.IntRange(min=2, max=len(LESION_TYPES)),
              help=f"K lesion types: the first K of {','.join(LESION_TYPES)}, {SYNTH_PER_CLASS} images each "
                   "(gistnet synth --classes), trained as one K-class model (data.classes; docs/multiclass.md).")
@user_errors(after_interrupt=DEMO_RESTART_HINT)
def demo_cmd(output, epochs, image_size, models, device, folds, split_method, external, per_site, n_readers,
             n_classes) -> None:
    """Synthesize a data set, train both ResNets on it and write the report: no bucket needed.

    The demo always starts its run over (--force): re-running it after an interruption trains
    from scratch. To resume instead, run `gistnet train` on the demo's data with a --run-id."""
    from gistnet.data import synth
    from gistnet.data.storage import LocalStore

    root = Path(output)
    data = root / "data"
    if n_classes is not None and (split_method or external or n_readers):
        raise click.UsageError("--classes draws one site of K lesion types; it does not combine with --split site, "
                               "--external or --readers")
    external = external or n_readers > 0
    class_flags = {}
    if n_classes is not None:  # K lesion types, several frames per lesion, manifest.csv with lesion_id
        from gistnet.data import synth_classes

        types = LESION_TYPES[:n_classes]
        data = root / f"data-{n_classes}-classes"
        if not (data / "synth.json").exists():
            synth_classes.write_classes(LocalStore(data), types, SYNTH_PER_CLASS, image_size, seed=0)
        class_flags = {"data.classes": ",".join(types)}
    elif split_method == "site" or external:  # sites A, B (and C), each its own acquisition and class mix
        sites = synth.sites(3, 0)
        data = root / ("data-sites-ab" if external else "data-sites")
        if not (data / "synth.json").exists():
            synth.write_sites(LocalStore(data), sites[:2] if external else sites, per_site, image_size, seed=0)
        if external and not (root / "data-site-c" / "synth.json").exists():
            synth.write_sites(LocalStore(root / "data-site-c"), sites[2:], per_site, image_size, seed=0)
    elif not (data / "synth.json").exists():
        synth.write_dataset(LocalStore(data), 69, 73, image_size, seed=0)
    site_flags = {"split.method": "site"} if split_method == "site" else {}
    cfg = config_mod.load_config(None, {"data.uri": str(data), "output.uri": str(root / "runs"),
                                        **site_flags, **class_flags, "train.epochs": epochs,
                                        "output.run_id": "demo-site" if split_method else
                                        "demo-external" if external else
                                        f"demo-{n_classes}-classes" if n_classes else "demo",
                                        "data.image_size": image_size, "train.models": models,
                                        "output.force": True, "train.device": device,
                                        **({"split.method": "kfold", "split.folds": folds} if folds is not None else {})})
    outcome = _run_training(cfg)
    if external:
        from gistnet.serving import external as external_mod

        done = external_mod.run(external_mod.Request(run=outcome.uri, data=str(root / "data-site-c"), name="site-C",
                                                     device=device), cfg)
        click.echo("\n".join(external_mod.summary_lines(done["report"])), err=True)
        click.echo(f"external evaluation: {done['uri']} (report.html beside it)", err=True)
    if n_readers:
        from gistnet.serving import readers as readers_mod

        site_c = json.loads((root / "data-site-c" / "synth.json").read_text())
        _write_readers(LocalStore(root), site_c, "GIST", n_readers, 0, "readers-site-c.csv")
        study = readers_mod.run(readers_mod.Request(readers=str(root / "readers-site-c.csv"), run=outcome.uri,
                                                    data=str(root / "data-site-c"), device=device), cfg)
        click.echo("\n".join(readers_mod.summary_lines(study["document"])), err=True)
        click.echo(f"reader study: {study['uri']} (readers.html beside it)", err=True)
    weights = "folds/<i>/<model>/model.safetensors" if folds is not None or split_method else "<model>/model.safetensors"
    click.echo(f"demo outputs: {outcome.uri} (report.html: open it in a browser; report.json, checklist.md, "
               f"predictions.csv, training_curves.png, roc.png, reliability.png, gradcam-<model>.png, {weights})",
               err=True)
