"""Procedural EUS-like images of several subepithelial lesion types (``gistnet synth --classes``).

Five types, each drawn with its textbook endosonographic appearance (docs/multiclass.md lists
each cue and the study it comes from): the layer of origin in the five-layer wall, the echo
level against the muscularis propria, homogeneous or heterogeneous texture, a clear or
indistinct margin, a marginal hypoechoic halo, cystic spaces, anechoic ducts, echogenic spots.
GIST and leiomyoma keep the paper's Table 1 frequencies (``synth.TABLE1``); the wall, the
texture, the speckle and the acquisition are ``synth``'s, so a GIST here looks like a GIST
there. The two-class ``synth.write_dataset`` is untouched by this module.

The unit is the lesion: each lesion is seen in 2 to 4 frames (the same tissue, the probe moved
a little, another gain, fresh speckle), and some patients have two lesions of the same type
(multiple type-1 gastric NETs are common, multiple leiomyomas occur). ``manifest.csv`` has
``path,label,patient_id,lesion_id``. Types overlap in every single cue (hypoechoic lesions of
similar size in neighbouring layers), so no one pixel statistic separates them.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from gistnet.data import synth

TYPES = ("GIST", "LM", "schwannoma", "NET", "ectopic_pancreas")
# Depth (fraction of the image height) of each layer of origin; the ectopic pancreas that spans
# the third and fourth layers sits on their boundary.
ORIGIN_DEPTH = {"deep_mucosa": synth.LAYER_DEPTH["muscularis_mucosae"], **synth.LAYER_DEPTH,
                "submucosa_and_muscularis_propria": 0.345}
ORIGIN_LAYER_NUMBER = {"muscularis_mucosae": "2nd", "deep_mucosa": "2nd", "submucosa": "3rd",
                       "muscularis_propria": "4th", "submucosa_and_muscularis_propria": "3rd and 4th"}
MP_LEVEL = synth.WALL_LAYERS[3][2]  # echo level of the muscularis propria (4th layer)
MP_DEEP_EDGE = synth.WALL_LAYERS[3][0] + synth.WALL_LAYERS[3][1]
ANECHOIC, HALO_LEVEL, SPOT_LEVEL = 0.02, 0.03, 0.75
DUCT_HALF_WIDTH = 0.013  # image-height units: about 1.7 px across at 64 px
# Probability of a second lesion (same type) in a patient: type-1 gastric NETs are often multiple.
SECOND_LESION = {"GIST": 0.1, "LM": 0.15, "schwannoma": 0.05, "NET": 0.35, "ectopic_pancreas": 0.05}
FRAMES = (2, 4)  # frames per lesion, inclusive
SEED_TAG = 55711  # keeps these draws apart from synth's (seed, class_offset + index) streams


@dataclass(frozen=True)
class Appearance:
    """What one lesion looks like: everything its frames share."""

    label: str
    diameter_mm: float
    layer: str  # layer of origin (ORIGIN_LAYER_NUMBER gives its number)
    centre_depth: float  # fraction of the image height
    lateral: float  # offset of the centre from the beam axis, image-height units
    shape: str
    aspect: float  # long axis / short axis
    echo_level: float  # mean echo of the lesion's core, 0..1 (the muscularis propria is MP_LEVEL)
    heterogeneity: float  # spread of the core's texture
    border_clear: bool
    lobulated: bool
    halo: bool  # marginal hypoechoic halo (schwannoma's lymphoid cuff)
    halo_width: float  # in lesion radii
    cysts: int  # anechoic cystic spaces
    ducts: int  # anechoic tubular (ductal) structures
    echogenic_spots: int  # small hyperechoic foci without shadow
    calcification: bool  # a bright focus with an acoustic shadow
    mp_thickening: bool  # a thickened 4th layer beneath the lesion (ectopic pancreas)


@dataclass(frozen=True)
class Frame:
    """One image of a lesion: the probe shifted by (dx, dy) pixels, a gain, fresh speckle."""

    dx: float = 0.0
    dy: float = 0.0
    gain: float = 1.0


def _bool(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _centre(layer: str, growth: str, half_h: float) -> float:
    """synth's placement: a lesion bulges from its layer of origin, inwards when intraluminal."""
    shift = {"intraluminal": -0.6, "extraluminal": 0.6, "mixed": 0.0}[growth]
    return ORIGIN_DEPTH[layer] + shift * half_h + 0.5 * half_h


ASPECT = {"round": 1.0, "oval": 1.5, "fusiform": 2.3, "irregular": 1.3}


def _half_axes(diameter_mm: float, aspect: float) -> tuple[float, float]:
    long_axis = diameter_mm / synth.FIELD_DEPTH_MM / 2
    return long_axis, long_axis / aspect


def sample_appearance(label: str, rng: np.random.Generator) -> Appearance:
    """One lesion of ``label`` (one of TYPES), its cues drawn with the frequencies in
    docs/multiclass.md."""
    lateral = float(rng.uniform(-0.08, 0.08))
    if label in ("GIST", "LM"):
        t = synth.sample_lesion(label, rng)
        aspect = ASPECT[t.shape]
        _, half_h = _half_axes(t.diameter_mm, aspect)
        heterogeneous, cysts = t.heterogeneous, int(t.cystic)
        if label == "GIST":  # heterogeneous when large, cystic spaces in large ones (degeneration)
            heterogeneous = _bool(rng, float(np.clip((t.diameter_mm - 5) / 30, 0.05, 0.95)))
            cysts = int(rng.integers(1, 3)) if _bool(rng, float(np.clip((t.diameter_mm - 20) / 100, 0, 0.25))) else 0
        halo = label == "GIST" and _bool(rng, 0.15)
        strength = (0.12 if heterogeneous else 0.025) + (0.08 if t.echo == "mixed" else 0.0)
        return Appearance(label, t.diameter_mm, t.layer, _centre(t.layer, t.growth, half_h), lateral, t.shape, aspect,
                          synth.ECHO_LEVEL[t.echo], strength, t.border_clear, t.lobulated, halo,
                          float(rng.uniform(0.12, 0.2)), cysts, 0, 0, t.calcification, False)
    if label == "schwannoma":  # Yoon et al. 2016 (n=27), Jung et al. 2008
        diameter = float(np.clip(rng.normal(32, 12), 8, 45))
        shape = "round" if _bool(rng, 0.5) else "oval"
        aspect = ASPECT[shape]
        growth = ("intraluminal", "mixed", "extraluminal")[rng.choice(3, p=[0.7, 0.2, 0.1])]
        heterogeneous = _bool(rng, 24 / 27)
        return Appearance(label, diameter, "muscularis_propria",
                          _centre("muscularis_propria", growth, _half_axes(diameter, aspect)[1]), lateral, shape,
                          aspect, 0.16 if _bool(rng, 17 / 27) else MP_LEVEL, 0.07 if heterogeneous else 0.025,
                          _bool(rng, 24 / 27), _bool(rng, 6 / 27), _bool(rng, 24 / 27), float(rng.uniform(0.15, 0.25)),
                          int(_bool(rng, 2 / 27)), 0, int(rng.integers(3, 9)) if _bool(rng, 21 / 27) else 0,
                          _bool(rng, 1 / 27), False)
    if label == "NET":  # deep mucosa or submucosa, small, round, homogeneous, well demarcated
        diameter = float(np.clip(rng.normal(8, 3), 4, 13))
        aspect = float(rng.uniform(1.0, 1.2))
        layer = "deep_mucosa" if _bool(rng, 0.4) else "submucosa"
        _, half_h = _half_axes(diameter, aspect)
        # Intraluminal: the lesion bulges into the lumen and leaves the 4th layer beneath it.
        centre = min(ORIGIN_DEPTH[layer] + float(rng.uniform(-0.01, 0.01)), 0.37 - half_h)
        return Appearance(label, diameter, layer, centre, lateral, "round", aspect,
                          float(rng.uniform(0.22, 0.3)), 0.03, _bool(rng, 0.95), False, False, 0.0, 0, 0, 0,
                          False, False)
    if label == "ectopic_pancreas":  # Matsushita et al. 1999 (n=10); size: Korean J Gastroenterol 2020
        diameter = float(np.clip(rng.normal(11, 3), 5, 20))
        aspect = float(rng.uniform(1.6, 2.4))
        layer = "submucosa" if _bool(rng, 0.5) else "submucosa_and_muscularis_propria"
        _, half_h = _half_axes(diameter, aspect)
        return Appearance(label, diameter, layer, ORIGIN_DEPTH[layer] + float(rng.uniform(-0.01, 0.01)), lateral,
                          "lens", aspect, float(rng.uniform(0.2, 0.34)), 0.13, not _bool(rng, 0.8), _bool(rng, 0.3),
                          False, 0.0, 0, int(rng.integers(1, 4)) if _bool(rng, 0.8) else 0,
                          int(rng.integers(2, 7)) if _bool(rng, 0.8) else 0, False, _bool(rng, 0.8))
    raise ValueError(f"unknown lesion type {label!r} (known: {', '.join(TYPES)})")


def lesion_tissue(a: Appearance, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The lesion in its wall as an echo map (``tissue``), with the masks a test measures:
    ``lesion`` (soft, 0..1), ``core`` (well inside it), ``halo`` and ``ducts``."""
    _, depth, angle = synth._sector_mask(size)
    tissue = synth.wall_tissue(size, depth)
    half_w, half_h = _half_axes(a.diameter_mm, a.aspect)
    x = (depth + 0.15) * angle  # arc length from the beam axis
    u = (x - a.lateral) / half_w
    v = (depth - a.centre_depth) / half_h
    theta, r = np.arctan2(v, u), np.hypot(u, v)
    if a.shape == "fusiform":
        r = (np.abs(u) ** 1.4 + np.abs(v) ** 2) ** 0.5
    boundary = np.ones_like(r)
    if a.shape in ("irregular", "lens"):
        phases = rng.uniform(0, 2 * np.pi, 3)
        amp = 0.12 if a.shape == "irregular" else 0.06
        boundary = boundary + sum(amp * np.cos(k * theta + p) for k, p in zip((3, 5, 7), phases))
    if a.lobulated:
        boundary = boundary + 0.15 * np.cos(4 * theta + rng.uniform(0, 2 * np.pi))
    edge = 0.04 if a.border_clear else 0.25
    lesion = np.clip((boundary - r) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    if a.mp_thickening:  # the 4th layer beneath the lesion thickened (muscular hypertrophy)
        below = (np.abs(x - a.lateral) < half_w * 1.1) & (depth > MP_DEEP_EDGE - 0.01) & (depth < MP_DEEP_EDGE + 0.035)
        tissue = np.where(below, MP_LEVEL, tissue)
    core_echo = np.clip(a.echo_level + a.heterogeneity * synth.texture_field(size, rng), ANECHOIC, 1.0)
    for _ in range(a.cysts):
        cu, cv = rng.uniform(-0.4, 0.4, 2)
        radius = rng.uniform(0.15, 0.3)
        core_echo = np.where(np.hypot(u - cu, (v - cv) * half_h / half_w) < radius, ANECHOIC, core_echo)
    ducts = np.zeros_like(lesion, dtype=bool)
    for _ in range(a.ducts):  # tubular, roughly along the long axis, curved
        offset, tilt, bend = rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.3), rng.uniform(-0.4, 0.4)
        reach = rng.uniform(0.5, 0.8)
        curve = offset + tilt * u + bend * u ** 2
        ducts |= (np.abs(v - curve) * half_h < DUCT_HALF_WIDTH) & (np.abs(u) < reach) & (r < boundary - 0.1)
    core_echo = np.where(ducts, ANECHOIC, core_echo)
    if a.echogenic_spots:
        ys, xs = np.nonzero((lesion > 0.9) & ~ducts)
        if len(ys):
            yy, xx = np.mgrid[0:size, 0:size]
            for i in rng.choice(len(ys), size=min(a.echogenic_spots, len(ys)), replace=False):
                core_echo = np.where(np.hypot(yy - ys[i], xx - xs[i]) < max(0.8, size / 110), SPOT_LEVEL, core_echo)
    halo = np.zeros_like(lesion)
    if a.halo:
        outer = np.clip((boundary * (1 + a.halo_width) - r) / 0.04 + 0.5, 0.0, 1.0)
        halo = np.clip(outer - lesion, 0.0, 1.0).astype(np.float32)
        tissue = tissue * (1 - halo) + HALO_LEVEL * halo
    tissue = tissue * (1 - lesion) + core_echo * lesion
    if a.calcification:
        tissue = synth._calcify(tissue, lesion, size, rng)
    core = (r < boundary * 0.6) & ~ducts
    return {"tissue": tissue.astype(np.float32), "lesion": lesion, "core": core, "halo": halo, "ducts": ducts}


def draw_frame(rng: np.random.Generator, size: int) -> Frame:
    shift = 0.03 * size
    return Frame(float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift)), float(rng.uniform(0.85, 1.15)))


def shifted(array: np.ndarray, frame: Frame) -> np.ndarray:
    """``array`` as the moved probe sees it (bilinear, edges repeated)."""
    if frame.dx == 0 and frame.dy == 0:
        return array
    return ndimage.shift(array.astype(np.float32), (frame.dy, frame.dx), order=1, mode="nearest")


def render_frame(tissue: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image of a lesion's ``tissue``: ``synth.acquire`` (speckle, attenuation, blur,
    fan) with the frame's shift and gain."""
    fan, depth, _ = synth._sector_mask(tissue.shape[0])
    return synth.acquire(shifted(tissue, frame), depth, fan, rng, gain=frame.gain)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _stream(seed: int, label: str, *path: int) -> np.random.Generator:
    """A generator for one patient / lesion / frame of ``label``: a type's images do not depend
    on which other types are drawn, nor in which order."""
    return np.random.default_rng([seed, SEED_TAG, TYPES.index(label), *path])


def check_types(names) -> tuple[str, ...]:
    """``names`` as a tuple; ValueError naming the first unknown or repeated type."""
    names = tuple(names)
    for i, name in enumerate(names):
        if name not in TYPES:
            raise ValueError(f"unknown lesion type {name!r} (known: {', '.join(TYPES)})")
        if name in names[:i]:
            raise ValueError(f"lesion type {name!r} named twice")
    if not names:
        raise ValueError(f"no lesion type named (known: {', '.join(TYPES)})")
    return names


def write_classes(store, classes, per_class: int, size: int, seed: int, on_progress=None) -> dict:
    """Write ``<type>/<type>_<patient>_<lesion>_<frame>.png`` for each type of ``classes``
    (``per_class`` images each), ``manifest.csv`` (header ``path,label,patient_id,lesion_id``) and
    ``synth.json`` describing each lesion and frame."""
    classes = check_types(classes)
    lines, records = ["path,label,patient_id,lesion_id"], []
    total, done = per_class * len(classes), 0
    counts = {}
    for label in classes:
        written, patient, lesions = 0, 0, 0
        while written < per_class:
            n_lesions = 2 if _stream(seed, label, patient).random() < SECOND_LESION[label] else 1
            patient_id = f"{label.lower()}-{patient:04d}"
            for k in range(n_lesions):
                if written >= per_class:
                    break
                rng = _stream(seed, label, patient, k)
                appearance = sample_appearance(label, rng)
                n_frames = min(int(rng.integers(FRAMES[0], FRAMES[1] + 1)), per_class - written)
                tissue = lesion_tissue(appearance, size, rng)["tissue"]
                lesion_id = f"{patient_id}-{k}"
                lesions += 1
                for f in range(n_frames):
                    frame_rng = _stream(seed, label, patient, k, f)
                    frame = draw_frame(frame_rng, size)
                    key = f"{label}/{label.lower()}_{patient:04d}_{k}_{f}.png"
                    store.write_bytes(key, png(render_frame(tissue, frame, frame_rng)))
                    lines.append(f"{key},{label},{patient_id},{lesion_id}")
                    records.append({"key": key, "patient_id": patient_id, "lesion_id": lesion_id, "frame": f,
                                    **{f"frame_{name}": v for name, v in asdict(frame).items()}, **asdict(appearance)})
                    written, done = written + 1, done + 1
                    if on_progress:
                        on_progress(done, total)
            patient += 1
        counts[label] = {"images": written, "lesions": lesions, "patients": patient}
    store.write_bytes("manifest.csv", ("\n".join(lines) + "\n").encode())
    summary = {"generator": "gistnet.data.synth_classes", "seed": seed, "image_size": size,
               "classes": list(classes), "counts": counts, "images": records}
    store.write_bytes("synth.json", json.dumps(summary, indent=1).encode())
    return summary
