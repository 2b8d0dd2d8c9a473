"""Claims in code comments, docs and the chart are backed or absent (issue 19, item 8).

A "measured"/"fastest" in a docstring, comment, doc page or chart value must point at its
benchmark (``benchmarks/``, where each figure has its command) or say that it was not
measured; a Kubernetes version the chart is said to need is the chart's own floor.
README.md is checked by the same rule once it is split into docs/ pages.
"""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLAIM = re.compile(r"\b(fastest|measured)\b", re.IGNORECASE)
BACKED = re.compile(r"benchmarks/|not (yet )?measured|no GPU figure|as soon as it is measured", re.IGNORECASE)


def sources() -> list[Path]:
    files = [*(REPO / "job").rglob("*.py"), *(REPO / "docs").rglob("*.md"), *(REPO / "helm").rglob("*.yaml"),
             *(REPO / "helm").rglob("*.tpl"), *(REPO / "scripts").glob("*.sh"), REPO / "Dockerfile"]
    return sorted(f for f in files if f.is_file())


def test_every_measured_or_fastest_points_at_its_benchmark_or_says_it_was_not_measured():
    unbacked = []
    for path in sources():
        lines = path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if CLAIM.search(line) and not BACKED.search(" ".join(lines[max(0, i - 2):i + 3])):
                unbacked.append(f"{path.relative_to(REPO)}:{i + 1}: {line.strip()}")
    assert not unbacked, "\n".join(unbacked)


def test_the_kubernetes_version_the_chart_needs_is_its_floor():
    chart = yaml.safe_load((REPO / "helm/gistnet/Chart.yaml").read_text())
    floor = re.fullmatch(r">=(\d+\.\d+)\.0-0", chart["kubeVersion"]).group(1)
    texts = {p: p.read_text() for p in [REPO / "helm/gistnet/values.yaml", *(REPO / "docs").rglob("*.md")]}
    needed = {(p.relative_to(REPO), v) for p, t in texts.items()
              for v in re.findall(r"Kubernetes\s*(?:#\s*)?>=\s*(\d+\.\d+)", t)}
    assert all(v == floor for _, v in needed), sorted(needed)
