"""Which images train and which validate: the paper's stratified hold-out, or k folds.

Both are stratified by class and, when ``manifest.csv`` gives patient ids, grouped by
patient so that no patient is on both sides (scikit-learn ``StratifiedGroupKFold``;
``StratifiedKFold`` / ``train_test_split`` without ids). A ``Plan`` is the whole run's
partition, saved as ``split.json``; each of its ``Split`` parts is one train/validation
pair (the hold-out has one, k-fold has k, numbered 0..k-1). ``select_folds`` reads ``--fold I``;
``--fold auto`` (``JOB_COMPLETION_INDEX``) picks a model too, so ``runs.select`` resolves it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from gistnet.config import SplitConfig
from gistnet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

HOLDOUT, KFOLD, SITE = "holdout", "kfold", "site"
MIN_SITES = 3  # a meta-analysis of fewer sites has no prediction interval (t with k-2 df)


@dataclass
class Split:
    """One train/validation partition; ``fold`` is None for the hold-out."""

    train: list[str]
    val: list[str]
    method: str
    seed: int
    val_fraction: float | None = None
    fold: int | None = None
    site: str | None = None  # the held-out site of a leave-one-site-out fold

    def to_dict(self) -> dict:
        return {"method": self.method, "seed": self.seed, "val_fraction": self.val_fraction, "fold": self.fold,
                **({"site": self.site} if self.site is not None else {}), "train": self.train, "val": self.val}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(train=list(d["train"]), val=list(d["val"]), method=d["method"], seed=int(d["seed"]),
                   val_fraction=d.get("val_fraction"), fold=d.get("fold"), site=d.get("site"))


@dataclass
class Plan:
    """The run's partition: ``parts[0]`` for a hold-out, ``parts[i]`` for fold i."""

    method: str  # holdout | kfold | site
    parts: list[Split]

    def part(self, fold: int | None) -> Split:
        return self.parts[0 if fold is None else fold]

    def keys(self) -> set[str]:
        return {k for p in self.parts for k in p.train + p.val}

    def to_dict(self) -> dict:
        if self.method == HOLDOUT:
            return self.parts[0].to_dict()
        return {"method": self.method, "folds": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if d.get("method") in (KFOLD, SITE):
            return cls(d["method"], [Split.from_dict(p) for p in d["folds"]])
        return cls(HOLDOUT, [Split.from_dict(d)])


def make_plan(keys: list[str], labels, patient_ids: list[str], cfg: SplitConfig, seed: int,
              class_names: tuple[str, str] = ("positive", "negative"), sites: list[str] | None = None,
              lesion_ids: list[str] | None = None, head: tuple[str, ...] | None = None) -> Plan:
    """The hold-out, k-fold or leave-one-site-out partition of ``keys``.

    ``labels`` are class indices into ``head`` (``data.head_classes``); without ``head`` the two
    classes of ``class_names`` (positive, negative): labels 1 positive, 0 negative. The split is
    stratified by class and grouped by patient (``patient_ids``) or, without patient ids, by
    lesion (``lesion_ids``), so the images of one lesion and of one patient stay on one side."""
    labels = np.asarray(labels).astype(int)
    head = tuple(head) if head is not None else (class_names[1], class_names[0])
    groups = grouping(patient_ids, lesion_ids, len(keys))
    if cfg.method == SITE:
        plan = Plan(SITE, make_site_folds(keys, labels, sites or [], seed, class_names, head))
    elif cfg.method == KFOLD:
        plan = Plan(KFOLD, make_folds(keys, labels, groups, cfg.folds, seed, class_names, head))
    else:
        plan = Plan(HOLDOUT, [make_holdout(keys, labels, groups, cfg.val_fraction, seed, head)])
    for i, part in enumerate(plan.parts):
        log.debug("split %s, part %d of %d: %d training, %d validation images (%s, seed %d)", plan.method, i + 1,
                  len(plan.parts), len(part.train), len(part.val), part.method, seed)
    return plan


def grouping(patient_ids: list[str], lesion_ids: list[str] | None, n: int) -> list[str]:
    """The unit the split keeps on one side: the patient when there are patient ids (a lesion
    belongs to one patient, so its images follow), else the lesion when there are lesion ids
    (each image without one its own), else none ([])."""
    if any(patient_ids):
        return list(patient_ids)
    if lesion_ids and any(lesion_ids):
        return [f"lesion:{lid}" if lid else f"image:{i}" for i, lid in enumerate(lesion_ids)]
    return list(patient_ids)


def _by(groups: list[str]) -> str:
    return "lesion_id" if groups and all(g.startswith(("lesion:", "image:")) for g in groups) else "patient_id"


def make_holdout(keys: list[str], labels, patient_ids: list[str], val_fraction: float, seed: int,
                 head: tuple[str, ...] = ("negative", "positive")) -> Split:
    """Stratified hold-out; grouped by patient (or lesion: ``grouping``) when ``patient_ids`` holds groups."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels).astype(int)
    check_holdout_possible(labels, patient_ids, val_fraction, head)
    keys_array = np.array(keys)
    if any(patient_ids):
        folds = StratifiedGroupKFold(n_splits=group_folds(val_fraction), shuffle=True, random_state=seed)
        train_idx, val_idx = next(folds.split(keys_array, labels, groups=group_codes(patient_ids)))
        part = Split(_plain(keys_array[train_idx]), _plain(keys_array[val_idx]),
                     f"stratified-group-kfold (by {_by(patient_ids)})", seed, val_fraction)
    else:
        train_keys, val_keys = train_test_split(keys_array, test_size=val_fraction, stratify=labels,
                                                random_state=seed)
        part = Split(_plain(train_keys), _plain(val_keys), "stratified-holdout", seed, val_fraction)
    check_both_classes(part, dict(zip(keys, labels.tolist())), head)
    return part


def group_codes(patient_ids: list[str]) -> np.ndarray:
    """Each image's patient as the rank of that patient's first image in the data's order.
    Patient ids are pseudonyms (an HMAC whose key may be drawn per run); scikit-learn orders the
    groups by their labels, so labelling them by pseudonym would make the split depend on the
    key. Ranked by first appearance, the split is a function of the data and the seed only."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(p, len(first)) for p in patient_ids], dtype=np.int64)


def group_folds(val_fraction: float) -> int:
    """Folds of the patient-grouped hold-out: the first one is the validation set."""
    return max(2, round(1 / val_fraction))


def _counted(counts: dict[str, int], head: tuple[str, ...]) -> str:
    """``positive 3, negative 9`` with two classes (as always), else ``GIST 3, LM 4, NET 2``."""
    if len(head) == 2:
        return f"positive {counts[head[1]]}, negative {counts[head[0]]}"
    return ", ".join(f"{name} {counts[name]}" for name in (head[-1], *head[:-1]))


def check_holdout_possible(labels: np.ndarray, patient_ids: list[str], val_fraction: float,
                           head: tuple[str, ...] = ("negative", "positive")) -> None:
    """Refuse, naming the class and the counts, a hold-out that cannot put every class on both sides."""
    counts = {name: int((labels == c).sum()) for c, name in enumerate(head)}
    fewest = min(counts, key=lambda name: (counts[name], head.index(name)))
    if counts[fewest] < 2:
        what = "a class" if len(head) == 2 else f"class {fewest!r}"
        raise DataError(f"{what} has {counts[fewest]} image(s) ({_counted(counts, head)}); "
                        "each class needs at least 2, one for training and one for validation")
    if any(patient_ids):
        folds, patients = group_folds(val_fraction), len(set(patient_ids))
        if patients < folds:
            unit = "lesions" if _by(patient_ids) == "lesion_id" else "patients"
            raise DataError(f"{patients} {unit} cannot fill the {folds} folds of the {unit[:-1]}-grouped split "
                            f"(split.val_fraction={val_fraction}); at least {folds} {unit} are needed")
        return
    n = len(labels)
    n_val = math.ceil(val_fraction * n)
    if n_val < 2 or n - n_val < 2:
        raise DataError(f"split.val_fraction={val_fraction} of {n} images leaves {n - n_val} for training and "
                        f"{n_val} for validation; each side needs at least one image of each class (2)")


def check_both_classes(part: Split, label_of: dict[str, int], head: tuple[str, ...] = ("negative", "positive")) -> None:
    """After the split: each class on each side, else a data error naming the counts."""
    for side, keys in (("training", part.train), ("validation", part.val)):
        found = np.bincount(np.asarray([label_of[k] for k in keys], dtype=np.int64), minlength=len(head))
        if found.min() > 0:
            continue
        where = f"fold {part.fold}" if part.fold is not None else f"split.val_fraction={part.val_fraction}"
        if len(head) == 2:
            counted = f"{found[1]} positive and {found[0]} negative images: a class is missing"
        else:
            missing = [head[i] for i in range(len(head)) if found[i] == 0]
            counted = f"no image of class {', '.join(map(repr, missing))}"
        raise DataError(f"the {side} set of the split ({part.method}, {where}) has {counted}; change "
                        f"{'split.folds' if part.fold is not None else 'split.val_fraction'} or add images "
                        "(or patients)")


def make_folds(keys: list[str], labels, patient_ids: list[str], k: int, seed: int,
               class_names: tuple[str, str], head: tuple[str, ...] | None = None) -> list[Split]:
    """k stratified folds (grouped by patient, or lesion, with ids): every image validates exactly once."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    head = tuple(head) if head is not None else (class_names[1], class_names[0])
    labels = np.asarray(labels).astype(int)
    grouped = any(patient_ids)
    for label, name in sorted(enumerate(head), key=lambda pair: -pair[0]):  # the positive class (last) first
        units = len({p for p, y in zip(patient_ids, labels) if y == label}) if grouped else int((labels == label).sum())
        if units < k:
            what = ("lesions" if _by(patient_ids) == "lesion_id" else "patients") if grouped else "images"
            raise DataError(f"split.folds={k} but class {name!r} has only {units} {what}; "
                            f"every fold needs at least one of each class (use --folds {max(2, units)} or fewer)")
    keys_array = np.array(keys)
    if grouped:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(keys_array, labels, groups=group_codes(patient_ids))
        method = f"stratified-group-kfold (by {_by(patient_ids)})"
    else:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        method, parts = "stratified-kfold", splitter.split(keys_array, labels)
    folds = [Split(_plain(keys_array[train_idx]), _plain(keys_array[val_idx]), method, seed, None, fold)
             for fold, (train_idx, val_idx) in enumerate(parts)]
    label_of = dict(zip(keys, labels.tolist()))
    for part in folds:
        check_both_classes(part, label_of, head)
    return folds


def make_site_folds(keys: list[str], labels, sites: list[str], seed: int,
                    class_names: tuple[str, str], head: tuple[str, ...] | None = None) -> list[Split]:
    """Leave-one-site-out ("internal-external" cross-validation): fold i validates on the i-th
    site (sorted by name) and trains on all the others. A held-out site may have one class
    (its metrics that need both are n/a); every training part needs every class."""
    head = tuple(head) if head is not None else (class_names[1], class_names[0])
    labels = np.asarray(labels).astype(int)
    if len(sites) != len(keys) or any(not s for s in sites):
        missing = len(keys) if len(sites) != len(keys) else sum(1 for s in sites if not s)
        raise DataError(f"split.method=site needs a site for every image: {missing} of {len(keys)} images have none "
                        "(manifest.csv with a header row and a site column)")
    counts = {s: sites.count(s) for s in sorted(set(sites))}
    if len(counts) < MIN_SITES:
        listed = ", ".join(f"{s}: {n} images" for s, n in counts.items())
        raise DataError(f"split.method=site needs at least {MIN_SITES} sites, the data has {len(counts)} ({listed}); "
                        "use --split kfold or add sites")
    folds = []
    for fold, site in enumerate(counts):
        val = [k for k, s in zip(keys, sites) if s == site]
        train = [k for k, s in zip(keys, sites) if s != site]
        part = Split(_plain(train), _plain(val), "leave-one-site-out", seed, None, fold, site)
        found = np.bincount(np.asarray([int(y) for y, s in zip(labels, sites) if s != site], dtype=np.int64),
                            minlength=len(head))
        if found.min() == 0:
            listed = " and ".join(f"{found[i]} {head[i]}" for i in (len(head) - 1, *range(len(head) - 1)))
            raise DataError(f"the training set of fold {fold} (all sites but {site}) has {listed} images: "
                            "a class is missing")
        folds.append(part)
    return folds


def select_folds(fold: str | None, cfg: SplitConfig) -> list[int | None]:
    """The folds this process trains: all of them, or the one ``--fold`` names (0-based)."""
    if fold is None or fold == "":
        return [None] if cfg.method == HOLDOUT else list(range(cfg.folds))
    if cfg.method == HOLDOUT:
        raise ConfigError(f"--fold {fold} needs a k-fold split (--split kfold --folds K); this run is a hold-out")
    try:
        index = int(fold)
    except ValueError:
        raise ConfigError(f"--fold must be an integer in 0..{cfg.folds - 1}, got {fold!r}") from None
    if cfg.method == SITE and index >= 0:
        return [index]  # the number of sites is known once the data is listed: checked against the plan then
    if not 0 <= index < cfg.folds:
        raise ConfigError(f"--fold {index} is out of range: split.folds={cfg.folds} gives folds 0..{cfg.folds - 1}")
    return [index]


def _plain(keys) -> list[str]:
    """Sorted built-in strs (numpy's str_ would not survive a weights_only checkpoint load)."""
    return sorted(str(k) for k in keys)
