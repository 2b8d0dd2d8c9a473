"""Procedural EUS-like images for demos and tests.

Each image is a grayscale sector scan with speckle, a five-layer gut wall and a hypoechoic
lesion whose size, shape, echo texture, layer of origin, growth, border, surface, cystic
areas and calcifications are drawn from the per-class frequencies of the paper's Table 1
(``../shared/PROTOCOL.md``). Classes overlap (both are mostly hypoechoic, round or oval
lesions of the muscularis propria), so a model must combine cues: lesion size, texture,
layer and border carry the signal, no single pixel does.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# Table 1 of the paper: category counts per class (GIST n=69, LM n=73).
TABLE1 = {
    "GIST": {
        "diameter_mm": (23.88, 13.12),
        "layer": {"muscularis_mucosae": 0, "submucosa": 3, "muscularis_propria": 66},
        "heterogeneous": {False: 29, True: 40},
        "echo": {"hypo": 58, "medium_low": 9, "mixed": 2},
        "shape": {"round": 32, "oval": 20, "fusiform": 5, "irregular": 12},
        "lobulated": {False: 67, True: 2},
        "growth": {"intraluminal": 51, "extraluminal": 14, "mixed": 4},
        "border_clear": {True: 61, False: 8},
        "surface": {"smooth": 60, "ulcer": 6, "erosion": 3},
        "calcification": {False: 66, True: 3},
        "cystic": {False: 63, True: 6},
    },
    "LM": {
        "diameter_mm": (9.63, 6.21),
        "layer": {"muscularis_mucosae": 26, "submucosa": 2, "muscularis_propria": 45},
        "heterogeneous": {False: 61, True: 12},
        "echo": {"hypo": 70, "medium_low": 1, "mixed": 2},
        "shape": {"round": 20, "oval": 26, "fusiform": 22, "irregular": 5},
        "lobulated": {False: 72, True: 1},
        "growth": {"intraluminal": 71, "extraluminal": 1, "mixed": 1},
        "border_clear": {True: 72, False: 1},
        "surface": {"smooth": 73, "ulcer": 0, "erosion": 0},
        "calcification": {False: 72, True: 1},
        "cystic": {False: 72, True: 1},
    },
}
CLASSES = tuple(TABLE1)
FIELD_DEPTH_MM = 50.0  # depth shown by the sector, top to bottom
# Depth (fraction of the image height) of the centre of each wall layer.
LAYER_DEPTH = {"muscularis_mucosae": 0.26, "submucosa": 0.31, "muscularis_propria": 0.38}


@dataclass(frozen=True)
class Lesion:
    label: str
    diameter_mm: float
    layer: str
    heterogeneous: bool
    echo: str
    shape: str
    lobulated: bool
    growth: str
    border_clear: bool
    surface: str
    calcification: bool
    cystic: bool


def _pick(rng: np.random.Generator, counts: dict):
    keys = list(counts)
    p = np.array([counts[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def sample_lesion(label: str, rng: np.random.Generator) -> Lesion:
    t = TABLE1[label]
    mean, sd = t["diameter_mm"]
    diameter = float(np.clip(rng.normal(mean, sd), 4.0, 45.0))
    fields = {k: _pick(rng, v) for k, v in t.items() if k != "diameter_mm"}
    return Lesion(label=label, diameter_mm=diameter, **fields)


def _sector_mask(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask of the fan plus each pixel's depth and lateral angle, apex above the image."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    apex_y = -0.15
    dy, dx = y - apex_y, x - 0.5
    radius = np.hypot(dx, dy)
    angle = np.arctan2(dx, dy)
    mask = (np.abs(angle) < np.deg2rad(50)) & (radius < 1.12)
    return mask, radius - 0.15, angle


def _lesion_mask(lesion: Lesion, size: int, depth: np.ndarray, angle: np.ndarray,
                 rng: np.random.Generator, field_depth_mm: float = FIELD_DEPTH_MM) -> tuple[np.ndarray, float, float]:
    """Soft mask (0..1) of the lesion in the wall, and its centre depth and half-height."""
    long_axis = lesion.diameter_mm / field_depth_mm / 2  # in image-height units
    aspect = {"round": 1.0, "oval": 1.5, "fusiform": 2.3, "irregular": 1.3}[lesion.shape]
    half_w, half_h = long_axis, long_axis / aspect
    centre = LAYER_DEPTH[lesion.layer] + {"intraluminal": -0.6, "extraluminal": 0.6, "mixed": 0.0}[lesion.growth] * half_h
    centre += half_h * 0.5  # lesions bulge from their layer of origin downwards into the image
    lateral = rng.uniform(-0.08, 0.08)
    u = ((depth + 0.15) * angle - lateral) / half_w  # arc length from the axis, in lesion units
    v = (depth - centre) / half_h
    theta = np.arctan2(v, u)
    r = np.hypot(u, v)
    boundary = np.ones_like(r)
    if lesion.shape == "fusiform":
        r = (np.abs(u) ** 1.4 + np.abs(v) ** 2) ** 0.5
    if lesion.shape == "irregular":
        phases = rng.uniform(0, 2 * np.pi, 3)
        boundary = boundary + sum(0.12 * np.cos(k * theta + p) for k, p in zip((3, 5, 7), phases))
    if lesion.lobulated:
        boundary = boundary + 0.15 * np.cos(4 * theta)
    edge = 0.04 if lesion.border_clear else 0.25
    mask = np.clip((boundary - r) / edge + 0.5, 0.0, 1.0)
    return mask, centre, half_h


# Five-layer wall (depth of the layer's centre, half-width, echo level), lumen to serosa:
# 1 interface/superficial mucosa (hyper), 2 deep mucosa/muscularis mucosae (hypo),
# 3 submucosa (hyper), 4 muscularis propria (hypo), 5 serosa/adventitia (hyper).
WALL_LAYERS = ((0.22, 0.02, 0.85), (0.26, 0.02, 0.2), (0.31, 0.03, 0.8), (0.38, 0.05, 0.22), (0.45, 0.015, 0.85))
LUMEN_DEPTH, LUMEN_LEVEL, BACKGROUND_LEVEL = 0.2, 0.08, 0.45
ECHO_LEVEL = {"hypo": 0.16, "medium_low": 0.3, "mixed": 0.24}


def wall_tissue(size: int, depth: np.ndarray) -> np.ndarray:
    """Echo level (0..1) of the water-filled lumen, the five-layer wall and the tissue beyond."""
    tissue = np.full((size, size), BACKGROUND_LEVEL, dtype=np.float32)
    for d, width, level in WALL_LAYERS:
        tissue = np.where(np.abs(depth - d) < width, level, tissue)
    return np.where(depth < LUMEN_DEPTH, LUMEN_LEVEL, tissue)


def texture_field(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian echo texture with unit spread (the lesion's internal structure)."""
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 30)
    return texture / (texture.std() + 1e-6)


def speckle_field(size: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Rayleigh speckle, smoothed to the transducer's resolution."""
    return ndimage.gaussian_filter(rng.rayleigh(0.8, (size, size)).astype(np.float32), 0.6)


def acquire(tissue: np.ndarray, depth: np.ndarray, fan: np.ndarray, rng: np.random.Generator,
            site: "Site | None" = None, gain: float = 1.0) -> np.ndarray:
    """The scan of a ``tissue`` echo map: speckle, depth attenuation, the site's acquisition
    effect, the beam's blur and the fan; uint8."""
    image = tissue * speckle_field(tissue.shape[0], rng) * np.exp(-0.9 * np.clip(depth, 0, None))
    if gain != 1.0:
        image = image * gain
    if site is not None:
        image = site.acquire(image, depth, rng)
    image = ndimage.gaussian_filter(image, 0.7) * fan
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def render(lesion: Lesion, size: int, rng: np.random.Generator, site: "Site | None" = None) -> np.ndarray:
    """One uint8 grayscale EUS-like image (with ``site``: that site's acquisition effect)."""
    fan, depth, angle = _sector_mask(size)
    tissue = wall_tissue(size, depth)
    mask, centre, half_h = _lesion_mask(lesion, size, depth, angle, rng,
                                        site.field_depth_mm if site else FIELD_DEPTH_MM)
    base = ECHO_LEVEL[lesion.echo]
    texture = texture_field(size, rng)
    strength = 0.12 if lesion.heterogeneous else 0.025
    if lesion.echo == "mixed":
        strength += 0.08
    inside = np.clip(base + strength * texture, 0.02, 1.0)
    if lesion.cystic:
        cy, cx = rng.uniform(-0.3, 0.3, 2)
        cyst = np.hypot((depth + 0.15) * angle - cx * 0.1, depth - centre - cy * half_h) < half_h * 0.3
        inside = np.where(cyst, 0.02, inside)
    tissue = tissue * (1 - mask) + inside * mask
    if lesion.calcification:
        tissue = _calcify(tissue, mask, size, rng)
    if lesion.surface != "smooth":
        top = centre - half_h
        notch = (np.abs(depth - top) < 0.02) & (np.abs(angle) < (0.06 if lesion.surface == "ulcer" else 0.03))
        tissue = np.where(notch, 0.95, tissue)
    return acquire(tissue, depth, fan, rng, site)


def _calcify(tissue: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A bright calcification at a random point well inside the lesion, with its acoustic shadow."""
    ys, xs = np.nonzero(mask > 0.9)
    if len(ys):
        i = rng.integers(len(ys))
        spot = np.hypot(np.arange(size)[:, None] - ys[i], np.arange(size)[None, :] - xs[i]) < max(1.5, size / 80)
        shadow = (np.abs(np.arange(size)[None, :] - xs[i]) < max(1.5, size / 60)) & (np.arange(size)[:, None] > ys[i])
        tissue = np.where(shadow, tissue * 0.35, tissue)
        tissue = np.where(spot, 1.0, tissue)
    return tissue


def generate(label: str, index: int, size: int, seed: int) -> tuple[bytes, Lesion]:
    """PNG bytes of one image; deterministic for (seed, label, index)."""
    class_offset = CLASSES.index(label) * 1_000_003
    rng = np.random.default_rng([seed, class_offset + index])
    lesion = sample_lesion(label, rng)
    pixels = render(lesion, size, rng)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue(), lesion


def write_dataset(store, n_gist: int, n_lm: int, size: int, seed: int,
                  class_names: tuple[str, str] = ("GIST", "LM"), on_progress=None) -> dict:
    """Write ``<class>/<class>_NNNN.png`` into ``store`` plus ``synth.json`` describing each lesion."""
    records = []
    total = n_gist + n_lm
    done = 0
    for label, folder, count in (("GIST", class_names[0], n_gist), ("LM", class_names[1], n_lm)):
        for i in range(count):
            png, lesion = generate(label, i, size, seed)
            key = f"{folder}/{label.lower()}_{i:04d}.png"
            store.write_bytes(key, png)
            records.append({"key": key, **asdict(lesion)})
            done += 1
            if on_progress:
                on_progress(done, total)
    summary = {"generator": "gistnet.data.synth", "seed": seed, "image_size": size,
               "counts": {class_names[0]: n_gist, class_names[1]: n_lm}, "images": records}
    store.write_bytes("synth.json", json.dumps(summary, indent=1).encode())
    return summary


# ---------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    """One hospital's acquisition: scanner gain, contrast (a gamma), extra speckle, stronger
    depth attenuation, a depth setting (the field of view, which changes every lesion's apparent
    size: the strongest cue the classes differ by) and its own class mix."""

    name: str
    gain: float = 1.0
    contrast: float = 1.0  # gamma applied to the echo image: > 1 darker mid-tones
    speckle: float = 0.0  # strength of an extra multiplicative Rayleigh speckle
    attenuation: float = 0.0  # extra exp(-a * depth)
    field_depth_mm: float = FIELD_DEPTH_MM
    gist_fraction: float = 0.5

    def acquire(self, image: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.clip(image * self.gain, 0, 1) ** self.contrast
        if self.speckle:
            noise = rng.rayleigh(1.0, image.shape).astype(np.float32) / np.sqrt(np.pi / 2)
            image = image * (1 + self.speckle * (noise - 1))
        return image * np.exp(-self.attenuation * np.clip(depth, 0, None))


# The first three sites: A and B close to each other, C (a different scanner, a shallower depth
# setting, more GISTs referred) far from both: gistnet demo --external trains on A and B, tests on C.
SITE_PRESETS = (
    Site("site-A"),
    Site("site-B", gain=1.15, contrast=0.9, speckle=0.15, attenuation=0.3, field_depth_mm=45.0, gist_fraction=0.42),
    Site("site-C", gain=0.85, contrast=1.35, speckle=0.45, attenuation=0.9, field_depth_mm=34.0, gist_fraction=0.62),
)
SECOND_IMAGE_FRACTION = 0.25  # patients with a second image of the same lesion (another frame)


def sites(k: int, seed: int) -> list[Site]:
    """``k`` sites: the presets, then sites drawn at random (deterministic for ``seed``)."""
    out = list(SITE_PRESETS[:k])
    rng = np.random.default_rng([seed, 7919])
    for i in range(len(out), k):
        out.append(Site(f"site-{chr(ord('A') + i) if i < 26 else i}", gain=float(rng.uniform(0.7, 1.3)),
                        contrast=float(rng.uniform(0.8, 1.6)), speckle=float(rng.uniform(0, 0.5)),
                        attenuation=float(rng.uniform(0, 1.2)), field_depth_mm=float(rng.uniform(34, 55)),
                        gist_fraction=float(rng.uniform(0.35, 0.65))))
    return out


def write_sites(store, site_list: list[Site], images_per_site: int, size: int, seed: int,
                class_names: tuple[str, str] = ("GIST", "LM"), on_progress=None) -> dict:
    """Write ``<site>/<class>/<image>.png`` for each site, ``manifest.csv`` with a header row
    (path,label,patient_id,site) and ``synth.json``. About a quarter of the patients have a
    second image (another frame of the same lesion)."""
    records, lines = [], ["path,label,patient_id,site"]
    total, done = images_per_site * len(site_list), 0
    for site in site_list:
        s_index = zlib.crc32(site.name.encode())  # by name: a site drawn alone is the same site
        n_gist = int(round(images_per_site * site.gist_fraction))
        for label, folder, count in (("GIST", class_names[0], n_gist), ("LM", class_names[1], images_per_site - n_gist)):
            written, patient = 0, 0
            while written < count:
                rng = np.random.default_rng([seed, 104729 + s_index, CLASSES.index(label), patient])
                lesion = sample_lesion(label, rng)
                views = 2 if rng.random() < SECOND_IMAGE_FRACTION and count - written >= 2 else 1
                patient_id = f"{site.name}-{label.lower()}-{patient:04d}"
                for view in range(views):
                    pixels = render(lesion, size, np.random.default_rng([seed, 104729 + s_index,
                                                                        CLASSES.index(label), patient, view]), site)
                    buf = io.BytesIO()
                    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False)
                    key = f"{site.name}/{folder}/{label.lower()}_{patient:04d}_{view}.png"
                    store.write_bytes(key, buf.getvalue())
                    lines.append(f"{key},{folder},{patient_id},{site.name}")
                    records.append({"key": key, "patient_id": patient_id, "site": site.name, **asdict(lesion)})
                    written, done = written + 1, done + 1
                    if on_progress:
                        on_progress(done, total)
                patient += 1
    store.write_bytes("manifest.csv", ("\n".join(lines) + "\n").encode())
    summary = {"generator": "gistnet.data.synth", "seed": seed, "image_size": size,
               "sites": [asdict(s) for s in site_list], "images": records}
    store.write_bytes("synth.json", json.dumps(summary, indent=1).encode())
    return summary
