"""``manifest.csv``: which object is which class, and what else is known about it.

Two forms. With a header row naming its columns (any order)::

    path,label,patient_id,site,frame,roi,age
    GIST/a.dcm,GIST,p01,north,2,40 30 600 500,63

``path`` and ``label`` are required; ``patient_id`` (the split keeps a patient on one side),
``lesion_id`` (the images of one lesion: the unit of the by-lesion evidence, kept on one side too),
``site``, ``frame`` (0-based frame of a multi-frame DICOM) and ``roi`` (``x0 y0 x1 y1`` in source
pixels, the region of interest) are optional; every other column is a covariate, kept as text.
Without a header, the old positional form ``path,label[,patient_id]`` still works.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from gistnet.errors import DataError

REQUIRED = ("path", "label")
KNOWN = ("path", "label", "patient_id", "lesion_id", "site", "frame", "roi")
POSITIONAL = ("path", "label", "patient_id")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    patient_id: str | None = None
    site: str | None = None
    frame: int | None = None
    roi: tuple[int, int, int, int] | None = None
    lesion_id: str | None = None
    covariates: dict[str, str] = field(default_factory=dict)


def parse_roi(text: str, where: str) -> tuple[int, int, int, int]:
    """``x0 y0 x1 y1`` (spaces or commas; x1, y1 exclusive) -> a tuple; DataError naming ``where``."""
    parts = text.replace(",", " ").split()
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise DataError(f"{where}: roi {text!r} is not 'x0 y0 x1 y1' (four integers, source pixels)")
    x0, y0, x1, y1 = values
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: roi {text!r} is empty or negative (need 0 <= x0 < x1 and 0 <= y0 < y1)")
    return values  # type: ignore[return-value]


def _header(first: list[str], where: str) -> list[str] | None:
    """The column names when the first row is a header (it names ``path``), else None."""
    names = [c.strip().lstrip("\ufeff").lower() for c in first]
    if "path" not in names:
        return None
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(f"{where}: the header names no {' or '.join(map(repr, missing))} column "
                        f"(it names: {', '.join(names)})")
    return names


def _check_unique(rows: list[tuple[int, ManifestRow]], where: str) -> None:
    """A path (and frame) listed twice would be scored twice; one path with two labels is a
    contradiction. Both name line numbers only: a path may carry patient data."""
    first_line: dict[tuple[str, int | None], int] = {}
    label_of: dict[str, tuple[str, int]] = {}
    for n, row in rows:
        key = (row.path, row.frame)
        if key in first_line:
            raise DataError(f"{where} line {n}: lists the same path{' and frame' if row.frame is not None else ''} "
                            f"as line {first_line[key]}")
        first_line[key] = n
        label, m = label_of.setdefault(row.path, (row.label, n))
        if label != row.label:
            raise DataError(f"{where} line {n}: labels a path {row.label!r} that line {m} labels {label!r}")


def read_manifest(text: str, where: str) -> list[ManifestRow]:
    """Rows of a manifest's ``text`` (``where`` names it in errors: the object's URI)."""
    rows = list(csv.reader(io.StringIO(text)))
    columns = _header(rows[0], where) if rows else None
    if columns is not None:
        rows = rows[1:]
        seen = set()
        for name in columns:
            if not name or name in seen:
                raise DataError(f"{where}: the header names column {name!r} twice or leaves one unnamed")
            seen.add(name)
    out = []
    for n, row in enumerate(rows, 2 if columns is not None else 1):
        if not row or not "".join(row).strip():
            continue
        if columns is None:
            if len(row) < 2:
                raise DataError(f"{where} line {n}: expected path,label[,patient_id] (or a header row naming the columns)")
            values = dict(zip(POSITIONAL, (c.strip() for c in row)))
        else:
            if len(row) != len(columns):
                raise DataError(f"{where} line {n}: {len(row)} fields, the header names {len(columns)}")
            values = {name: c.strip() for name, c in zip(columns, row)}
        out.append((n, _row(values, f"{where} line {n}")))
    _check_unique(out, where)
    return [row for _, row in out]


def _row(values: dict[str, str], where: str) -> ManifestRow:
    if not values.get("path"):
        raise DataError(f"{where}: empty path")
    frame = None
    if values.get("frame"):
        try:
            frame = int(values["frame"])
        except ValueError:
            frame = -1
        if frame < 0:
            raise DataError(f"{where}: frame {values['frame']!r} is not a frame number (0, 1, ...)")
    roi = parse_roi(values["roi"], where) if values.get("roi") else None
    return ManifestRow(path=values["path"], label=values.get("label", ""),
                       patient_id=values.get("patient_id") or None, site=values.get("site") or None,
                       frame=frame, roi=roi, lesion_id=values.get("lesion_id") or None,
                       covariates={k: v for k, v in values.items() if k not in KNOWN})
