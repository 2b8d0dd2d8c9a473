"""``manifest.csv``: which image is which class, and (optionally) whose, from where, and what else.

Two forms. With a header row naming its columns::

    path,label,patient_id,site,sex,location
    GIST/a.png,GIST,P001,hospital-a,F,stomach

``path`` and ``label`` are required; ``patient_id``, ``site``, ``frame`` and ``roi`` have
their meaning; every other column is a covariate (for ``evaluate.subgroups``). Without a
header the old positional form ``path,label[,patient_id]`` still works.

(Minimal version written on the ``external`` branch with the interface the ``dicom`` branch
owns; the integrator keeps the dicom branch's module.)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from gistnet.errors import DataError

KNOWN = ("path", "label", "patient_id", "site", "frame", "roi")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    patient_id: str | None = None
    site: str | None = None
    frame: str | None = None
    roi: str | None = None
    covariates: dict[str, str] = field(default_factory=dict)


def read_manifest(text: str, where: str) -> list[ManifestRow]:
    """The rows of ``text`` (a manifest's content); ``where`` names it in errors (its URI)."""
    rows = list(csv.reader(io.StringIO(text)))
    header = None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header = [c.strip() for c in rows[0]]
        header[0], header[1] = "path", "label"
        if len(set(header)) != len(header) or not all(header):
            raise DataError(f"{where}: the header row names a column twice or has an empty name: {','.join(header)}")
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 2 if header else 1):
        if not row or not "".join(row).strip():
            continue
        cells = [c.strip() for c in row]
        if header is None:
            if len(cells) < 2:
                raise DataError(f"{where} line {n}: expected path,label[,patient_id]")
            out.append(ManifestRow(cells[0], cells[1], (cells[2] or None) if len(cells) > 2 else None))
            continue
        if len(cells) != len(header):
            raise DataError(f"{where} line {n}: {len(cells)} values for the header's {len(header)} columns "
                            f"({','.join(header)})")
        values = dict(zip(header, cells))
        out.append(ManifestRow(values["path"], values["label"], values.get("patient_id") or None,
                               values.get("site") or None, values.get("frame") or None, values.get("roi") or None,
                               {k: v for k, v in values.items() if k not in KNOWN}))
    return out
