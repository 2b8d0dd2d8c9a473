"""Multi-reader multi-case ROC analysis: Obuchowski-Rockette with Hillis' degrees of freedom.

Readers and cases both vary in a reader study, so a comparison of modalities (unaided vs
aided, say) must treat both as random samples. The Obuchowski-Rockette (OR) model does this
from the reader x modality table of AUCs and the covariances of those AUCs over cases;
Hillis' denominator degrees of freedom make its F test neither liberal nor conservative with
few readers. No maintained Python library ships it (the references are the Iowa OR-DBM MRMC
software and the R packages MRMCaov and RJafroc), so it is written here after:

- Obuchowski NA, Rockette HE (1995), Commun Stat Simul Comput 24:285-308;
- Hillis SL, Obuchowski NA, Schartz KM, Berbaum KS (2005), Stat Med 24:1579-1607;
- Hillis SL (2007), Stat Med 26:596-619 (ddf_H and the single-modality intervals);
- Hillis SL, Berbaum KS, Metz CE (2008), Acad Radiol 15:647-661.

``tests/evidence/test_mrmc.py`` reproduces the OR-DBM MRMC 2.51 output for the Van Dyke
data set (5 readers, 2 modalities, 114 cases) to its printed precision.

Everything here is a pure function of a :class:`Ratings` table: no I/O, no documents.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from gistnet.evidence.compare import delong

COVARIANCE_METHODS = ("jackknife", "delong")


@dataclass(frozen=True)
class Ratings:
    """One reader study, fully crossed: every reader rated every case in every modality.

    ``scores[i, j, k]`` is reader j's rating of case k in modality i (larger = more likely
    positive); ``truth[k]`` is 1 for a positive case, 0 for a negative one.
    """

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.modalities), len(self.readers), len(self.cases))
        scores = np.asarray(self.scores, dtype=np.float64)
        truth = np.asarray(self.truth).astype(int)
        if scores.shape != shape:
            raise ValueError(f"scores have shape {scores.shape}, expected {shape} (modalities, readers, cases)")
        if truth.shape != (shape[2],) or not np.isin(truth, (0, 1)).all():
            raise ValueError("truth must hold one 0/1 value per case")
        if truth.min() == truth.max():
            raise ValueError("an ROC analysis needs positive and negative cases")
        if not np.isfinite(scores).all():
            raise ValueError("every rating must be a finite number")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "truth", truth)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.scores.shape  # type: ignore[return-value]


def _placements(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """psi(x, y) for every positive x (rows) and negative y (columns): 1, 1/2 for a tie, 0."""
    diff = positives[:, None] - negatives[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def empirical_auc(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The trapezoidal (Wilcoxon) AUC of each row of ``scores`` (..., cases)."""
    truth = np.asarray(truth).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    flat = scores.reshape(-1, scores.shape[-1])
    aucs = [_placements(row[truth], row[~truth]).mean() for row in flat]
    return np.asarray(aucs).reshape(scores.shape[:-1])


def jackknife_aucs(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (..., cases) with case k left out, for every k: (..., cases)."""
    truth = np.asarray(truth).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    flat = scores.reshape(-1, scores.shape[-1])
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    out = np.empty_like(flat)
    for row, result in zip(flat, out):
        psi = _placements(row[truth], row[~truth])
        total = psi.sum()
        result[truth] = (total - psi.sum(axis=1)) / ((n_pos - 1) * n_neg)
        result[~truth] = (total - psi.sum(axis=0)) / (n_pos * (n_neg - 1))
    return out.reshape(scores.shape)


def auc_covariance(ratings: Ratings, method: str = "jackknife") -> np.ndarray:
    """Covariance over cases of the reader x modality AUCs, rows in (modality, reader) order."""
    n_mod, n_read, n_case = ratings.shape
    flat = ratings.scores.reshape(n_mod * n_read, n_case)
    if method == "jackknife":
        left_out = jackknife_aucs(ratings.truth, flat)
        centred = left_out - left_out.mean(axis=1, keepdims=True)
        return (n_case - 1) / n_case * centred @ centred.T
    if method == "delong":
        return delong(flat, ratings.truth)[1]
    raise ValueError(f"covariance method {method!r}: use one of {', '.join(COVARIANCE_METHODS)}")


@dataclass(frozen=True)
class Components:
    """The OR error variance and the three error covariances (Hillis 2005, eq. 2)."""

    var: float  # Var(error): same reader, same modality
    cov1: float  # same reader, different modalities
    cov2: float  # different readers, same modality
    cov3: float  # different readers, different modalities


def components(cov: np.ndarray, n_mod: int, n_read: int, modality: int | None = None) -> Components:
    """Average the covariance matrix's entries by kind; ``modality`` limits it to one modality."""
    index = list(itertools.product(range(n_mod), range(n_read)))
    sums = {"var": [], "cov1": [], "cov2": [], "cov3": []}
    for a, (i, j) in enumerate(index):
        for b, (i2, j2) in enumerate(index):
            if modality is not None and not (i == i2 == modality):
                continue
            kind = ("var" if j == j2 else "cov2") if i == i2 else ("cov1" if j == j2 else "cov3")
            sums[kind].append(cov[a, b])
    return Components(**{k: float(np.mean(v)) if v else 0.0 for k, v in sums.items()})


@dataclass(frozen=True)
class Difference:
    """One pair of modalities: the reader-averaged AUC difference ``a - b``."""

    a: str
    b: str
    difference: float
    se: float
    df: float  # math.inf for a z interval
    p: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ModalityAUC:
    """One modality's reader-averaged AUC and its interval (from that modality's data alone)."""

    modality: str
    auc: float
    se: float
    df: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Analysis:
    """One OR analysis: RRRC (random readers and cases), FRRC (fixed readers) or RRFC (fixed cases)."""

    name: str
    statistic: float | None  # F for RRRC and RRFC, chi-square for FRRC; None without a test
    distribution: str  # "F" or "chi2"
    ndf: float | None
    ddf: float | None  # math.inf for the chi-square
    p: float | None
    differences: tuple[Difference, ...]
    modalities: tuple[ModalityAUC, ...]
    note: str = ""


@dataclass(frozen=True)
class ORResult:
    """Everything an OR reader study report needs, from one :class:`Ratings` table."""

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    n_cases: int
    n_positive: int
    foms: np.ndarray  # (modalities, readers) AUCs
    covariance: str
    components: Components
    ms_t: float
    ms_r: float
    ms_tr: float
    rrrc: Analysis
    frrc: Analysis
    rrfc: Analysis


def _interval(estimate: float, se: float, df: float, alpha: float) -> tuple[float, float, float]:
    """Two-sided p of estimate/se and the (1 - alpha) interval, t on df (z when df is inf)."""
    dist = stats.norm if math.isinf(df) else stats.t(df)
    crit = float(dist.ppf(1 - alpha / 2))
    p = float(2 * dist.sf(abs(estimate) / se)) if se > 0 else (0.0 if estimate else 1.0)
    return p, estimate - crit * se, estimate + crit * se


def _mean_squares(foms: np.ndarray) -> tuple[float, float, float]:
    n_mod, n_read = foms.shape
    grand, by_mod, by_read = foms.mean(), foms.mean(axis=1), foms.mean(axis=0)
    ms_t = n_read * ((by_mod - grand) ** 2).sum() / (n_mod - 1) if n_mod > 1 else math.nan
    ms_r = n_mod * ((by_read - grand) ** 2).sum() / (n_read - 1) if n_read > 1 else math.nan
    inter = foms - by_mod[:, None] - by_read[None, :] + grand
    dof = (n_mod - 1) * (n_read - 1)
    ms_tr = (inter**2).sum() / dof if dof else math.nan
    return float(ms_t), float(ms_r), float(ms_tr)


def _differences(names, means, se: float, df: float, alpha: float) -> tuple[Difference, ...]:
    rows = []
    for a, b in itertools.combinations(range(len(names)), 2):
        diff = float(means[a] - means[b])
        p, low, high = _interval(diff, se, df, alpha)
        rows.append(Difference(names[a], names[b], diff, se, df, p, low, high))
    return tuple(rows)


def _modality_aucs(ratings, foms, cov, kind: str, alpha: float) -> tuple[ModalityAUC, ...]:
    """Single-modality intervals (Hillis 2007; OR-DBM MRMC's part (c) of each analysis)."""
    n_mod, n_read, _ = ratings.shape
    rows = []
    for i, name in enumerate(ratings.modalities):
        part = components(cov, n_mod, n_read, modality=i)
        auc = float(foms[i].mean())
        ms_r = float(((foms[i] - auc) ** 2).sum() / (n_read - 1)) if n_read > 1 else math.nan
        if kind == "rrrc":
            term = ms_r + n_read * max(part.cov2, 0.0)
            df = term**2 / (ms_r**2 / (n_read - 1)) if ms_r > 0 else math.inf
        elif kind == "frrc":
            term, df = part.var + (n_read - 1) * max(part.cov2, 0.0), math.inf
        else:
            term, df = ms_r, float(n_read - 1)
        se = math.sqrt(term / n_read) if term >= 0 else math.nan
        _, low, high = _interval(auc, se, df, alpha)
        rows.append(ModalityAUC(name, auc, se, df, low, high))
    return tuple(rows)


ONE_READER = "one reader: readers cannot be treated as random"
ONE_MODALITY = "one modality: no modality comparison"


def _untestable(name: str, distribution: str, modalities, note: str) -> Analysis:
    return Analysis(name, None, distribution, None, None, None, (), tuple(modalities), note)


def _prelude(name: str, distribution: str, ratings, foms, cov, alpha, random_readers: bool):
    """The single-modality intervals, and the analysis itself when there is nothing to test."""
    n_mod, n_read, _ = ratings.shape
    if random_readers and n_read < 2:
        return (), _untestable(name, distribution, (), ONE_READER)
    modalities = _modality_aucs(ratings, foms, cov, name, alpha)
    return modalities, (_untestable(name, distribution, modalities, ONE_MODALITY) if n_mod < 2 else None)


def _rrrc(ratings, foms, cov, comp, ms, alpha) -> Analysis:
    n_mod, n_read, _ = ratings.shape
    ms_t, _, ms_tr = ms
    modalities, untestable = _prelude("rrrc", "F", ratings, foms, cov, alpha, random_readers=True)
    if untestable:
        return untestable
    error = ms_tr + n_read * max(comp.cov2 - comp.cov3, 0.0)
    ndf = n_mod - 1
    ddf = error**2 / (ms_tr**2 / ((n_mod - 1) * (n_read - 1))) if ms_tr > 0 else math.inf
    statistic = ms_t / error
    p = float(stats.f.sf(statistic, ndf, ddf)) if not math.isinf(ddf) else float(stats.chi2.sf(statistic * ndf, ndf))
    se = math.sqrt(2 / n_read * error)
    diffs = _differences(ratings.modalities, foms.mean(axis=1), se, ddf, alpha)
    return Analysis("rrrc", float(statistic), "F", float(ndf), float(ddf), p, diffs, modalities)


def _frrc(ratings, foms, cov, comp, ms, alpha) -> Analysis:
    n_mod, n_read, _ = ratings.shape
    modalities, untestable = _prelude("frrc", "chi2", ratings, foms, cov, alpha, random_readers=False)
    if untestable:
        return untestable
    error = comp.var - comp.cov1 + (n_read - 1) * max(comp.cov2 - comp.cov3, 0.0)
    statistic = (n_mod - 1) * ms[0] / error
    p = float(stats.chi2.sf(statistic, n_mod - 1))
    se = math.sqrt(2 / n_read * error)
    diffs = _differences(ratings.modalities, foms.mean(axis=1), se, math.inf, alpha)
    return Analysis("frrc", float(statistic), "chi2", float(n_mod - 1), math.inf, p, diffs, modalities)


def _rrfc(ratings, foms, cov, comp, ms, alpha) -> Analysis:
    n_mod, n_read, _ = ratings.shape
    ms_t, _, ms_tr = ms
    modalities, untestable = _prelude("rrfc", "F", ratings, foms, cov, alpha, random_readers=True)
    if untestable:
        return untestable
    ndf, ddf = n_mod - 1, (n_mod - 1) * (n_read - 1)
    statistic = ms_t / ms_tr if ms_tr > 0 else math.inf
    p = float(stats.f.sf(statistic, ndf, ddf))
    se = math.sqrt(2 / n_read * ms_tr)
    diffs = _differences(ratings.modalities, foms.mean(axis=1), se, float(ddf), alpha)
    return Analysis("rrfc", float(statistic), "F", float(ndf), float(ddf), p, diffs, modalities)


def or_analysis(ratings: Ratings, covariance: str = "jackknife", alpha: float = 0.05) -> ORResult:
    """The three OR analyses of ``ratings`` with the empirical AUC as the figure of merit."""
    n_mod, n_read, n_case = ratings.shape
    foms = empirical_auc(ratings.truth, ratings.scores)
    cov = auc_covariance(ratings, covariance)
    comp = components(cov, n_mod, n_read)
    ms = _mean_squares(foms)
    args = (ratings, foms, cov, comp, ms, alpha)
    return ORResult(
        modalities=ratings.modalities, readers=ratings.readers, n_cases=n_case,
        n_positive=int(ratings.truth.sum()), foms=foms, covariance=covariance, components=comp,
        ms_t=ms[0], ms_r=ms[1], ms_tr=ms[2],
        rrrc=_rrrc(*args), frrc=_frrc(*args), rrfc=_rrfc(*args),
    )


MODEL_VERSUS_READERS_METHOD = (
    "Obuchowski-Rockette with Hillis' ddf, the model entered as a second modality in which every "
    "reader gives the model's score (readers and cases random; as in McKinney et al., Nature 2020, "
    "reader study analysis)"
)


def model_versus_readers(truth, model_scores, reader_scores, readers, alpha: float = 0.05,
                         covariance: str = "jackknife") -> Analysis:
    """The model's AUC against the readers' average AUC in one modality, readers and cases random.

    ``reader_scores`` is (readers, cases). The model becomes a modality whose every "reader"
    rates each case with the model's score, so its AUC has no reader variance while the readers'
    has; the RRRC analysis of the two modalities is then the test (difference = model - readers).
    """
    reader_scores = np.asarray(reader_scores, dtype=np.float64)
    model = np.broadcast_to(np.asarray(model_scores, dtype=np.float64), reader_scores.shape)
    ratings = Ratings(("model", "readers"), tuple(readers), tuple(str(k) for k in range(reader_scores.shape[1])),
                      truth, np.stack([model, reader_scores]))
    return or_analysis(ratings, covariance=covariance, alpha=alpha).rrrc
