"""The readers file of a reader study: who called what on which case, in which modality.

A CSV with a header naming its columns (any order)::

    case,reader,modality,rating,call,truth,patient_id,lesion_id
    GIST/a.png,r1,unaided,4,GIST,GIST,p01,

``case`` and ``reader`` are required, and ``rating`` (the reader's confidence that the case is
the positive class: any ordered number) or ``call`` (the class the reader named) or both.
``modality`` (e.g. unaided / aided) defaults to one modality; ``truth`` is the reference class
when the cases are not a gistnet data set; ``patient_id`` and ``lesion_id`` are optional.
The design must be fully crossed: every reader reads every case in every modality.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np

from gistnet.errors import DataError

REQUIRED = ("case", "reader")
KNOWN = ("case", "reader", "modality", "rating", "call", "truth", "patient_id", "lesion_id")
DEFAULT_MODALITY = "unaided"
MAX_NAMED = 5  # how many missing cells or unknown cases an error names


def first_few(names: list[str], sep: str = "; ") -> str:
    """The first ``MAX_NAMED`` of ``names`` for an error, "..." when there are more."""
    return sep.join(names[:MAX_NAMED]) + (" ..." if len(names) > MAX_NAMED else "")


@dataclass(frozen=True)
class ReaderRow:
    line: int
    case: str
    reader: str
    modality: str
    rating: float | None
    call: str | None
    truth: str | None
    patient_id: str | None
    lesion_id: str | None


@dataclass(frozen=True)
class ReaderTable:
    """The parsed file: readers, cases and modalities in the order they first appear."""

    where: str
    rows: tuple[ReaderRow, ...]
    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.columns

    @property
    def has_calls(self) -> bool:
        return "call" in self.columns

    def _cube(self, value, dtype) -> np.ndarray:
        index = {name: {v: i for i, v in enumerate(values)} for name, values in
                 (("modality", self.modalities), ("reader", self.readers), ("case", self.cases))}
        cube = np.empty((len(self.modalities), len(self.readers), len(self.cases)), dtype=dtype)
        for row in self.rows:
            cube[index["modality"][row.modality], index["reader"][row.reader], index["case"][row.case]] = value(row)
        return cube

    def ratings(self) -> np.ndarray:
        """(modalities, readers, cases) ratings."""
        return self._cube(lambda r: r.rating, np.float64)

    def calls(self) -> np.ndarray:
        """(modalities, readers, cases) named classes, as text."""
        return self._cube(lambda r: r.call, object)

    def renamed(self, names: dict[str, str]) -> "ReaderTable":
        """The same table with the cases in ``names`` renamed (the rest kept)."""
        rows = tuple(dataclasses.replace(r, case=names.get(r.case, r.case)) for r in self.rows)
        return dataclasses.replace(self, rows=rows, cases=tuple(names.get(c, c) for c in self.cases))

    def per_case(self, field: str) -> dict[str, str]:
        """``truth``, ``patient_id`` or ``lesion_id`` of each case that has one."""
        return {r.case: getattr(r, field) for r in self.rows if getattr(r, field)}


def _header(first: list[str], where: str) -> tuple[str, ...]:
    names = tuple(c.strip().lstrip("\ufeff").lower() for c in first)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(f"{where}: the header names no {' or '.join(map(repr, missing))} column (it names: "
                        f"{', '.join(names) or 'nothing'}); a readers file starts with a header row such as "
                        "case,reader,modality,rating")
    if "rating" not in names and "call" not in names:
        raise DataError(f"{where}: the header names neither a 'rating' nor a 'call' column: a reader study needs "
                        "the readers' ratings, their calls, or both")
    if len(set(names)) != len(names) or "" in names:
        raise DataError(f"{where}: the header names a column twice or leaves one unnamed ({', '.join(names)})")
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise DataError(f"{where}: unknown column {unknown[0]!r} (known: {', '.join(KNOWN)})")
    return names


def _rating(text: str, where: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: rating {text!r} is not a number (ratings are ordered numbers: a 1-5 scale, "
                        "0-100, a probability)")
    return value


def _rows(text: str, where: str) -> tuple[tuple[str, ...], list[ReaderRow]]:
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        raise DataError(f"{where} is empty: a readers file has a header row and one row per case, reader and modality")
    columns = _header(lines[0], where)
    rows = []
    for n, fields in enumerate(lines[1:], 2):
        if not fields or not "".join(fields).strip():
            continue
        at = f"{where} line {n}"
        if len(fields) != len(columns):
            raise DataError(f"{at}: {len(fields)} fields, the header names {len(columns)}")
        v = {name: f.strip() for name, f in zip(columns, fields)}
        if not v["case"] or not v["reader"]:
            raise DataError(f"{at}: empty {'case' if not v['case'] else 'reader'}")
        rating = _rating(v.get("rating", ""), at)
        if "rating" in columns and rating is None and not v.get("call"):
            raise DataError(f"{at}: neither a rating nor a call")
        rows.append(ReaderRow(n, v["case"], v["reader"], v.get("modality") or DEFAULT_MODALITY, rating,
                              v.get("call") or None, v.get("truth") or None, v.get("patient_id") or None,
                              v.get("lesion_id") or None))
    if not rows:
        raise DataError(f"{where} has a header but no rows")
    return columns, rows


def _ordered(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _check_crossed(rows: list[ReaderRow], modalities, readers, cases, where: str) -> None:
    seen: dict[tuple[str, str, str], int] = {}
    for row in rows:
        cell = (row.modality, row.reader, row.case)
        if cell in seen:
            raise DataError(f"{where} line {row.line}: reader {row.reader!r} rated case {row.case!r} in modality "
                            f"{row.modality!r} already on line {seen[cell]}")
        seen[cell] = row.line
    missing = [(m, r, c) for m in modalities for r in readers for c in cases if (m, r, c) not in seen]
    if missing:
        named = first_few([f"reader {r!r}, case {c!r}, modality {m!r}" for m, r, c in missing])
        raise DataError(f"{where}: {len(missing)} of {len(modalities) * len(readers) * len(cases)} cells missing "
                        f"(every reader must read every case in every modality: a fully crossed design; split-plot "
                        f"designs are not supported): {named}")


def _check_consistent(rows: list[ReaderRow], field: str, where: str) -> None:
    first: dict[str, tuple[str, int]] = {}
    for row in rows:
        value = getattr(row, field)
        if value is None:
            continue
        known, line = first.setdefault(row.case, (value, row.line))
        if known != value:
            raise DataError(f"{where} line {row.line}: case {row.case!r} has {field} {value!r}, line {line} gives "
                            f"{known!r}")


def read_readers(text: str, where: str) -> ReaderTable:
    """Parse and check a readers file's ``text`` (``where`` names it in errors)."""
    columns, rows = _rows(text, where)
    modalities, readers = _ordered(r.modality for r in rows), _ordered(r.reader for r in rows)
    cases = _ordered(r.case for r in rows)
    _check_crossed(rows, modalities, readers, cases, where)
    for field in ("truth", "patient_id", "lesion_id"):
        _check_consistent(rows, field, where)
    if "rating" in columns:
        unrated = [r for r in rows if r.rating is None]
        if unrated:
            raise DataError(f"{where} line {unrated[0].line}: no rating, while other rows have one (rate every "
                            f"row, or leave the rating column out and analyse the calls)")
    return ReaderTable(where, tuple(rows), modalities, readers, cases, columns)
