"""Parametric synthetic brightfield micrograph of a sintered Nd2Fe14B (NdFeB) magnet.

The real image used in the paper is not public, so the project's default data is
made here, the way parametric microstructure models are usually built:

1. **Grains** - a Voronoi tessellation of jittered-lattice seed points, evaluated
   on smoothly *perturbed* pixel coordinates (a random, smooth displacement
   field), so grain boundaries are gently curved instead of straight polygons.
   One KD-tree query (k=3 nearest seeds) per pixel gives the grain label, the
   distance to the nearest grain boundary (to the bisector of the two nearest
   seeds) and a triple-junction proximity (distance to the second bisector).
2. **Phases** - placed on top of the grain structure, each by selecting
   *exactly* the target number of pixels with the lowest value of a
   phase-specific score (a quantile threshold), so class fractions are hit
   almost exactly for any seed and any image size:

   * ``oxide``: rounded particles (log-normal radii, noisy outline) centred
     mostly on triple junctions and grain boundaries;
   * ``eta``: irregular blobs from a low-frequency noise field mixed with a
     per-grain random value (blobs partly follow grain boundaries);
   * ``nd_rich``: thin films along grain boundaries (width varies per boundary
     and smoothly along it, missing on some boundaries) plus small pockets at
     triple junctions;
   * ``matrix``: everything else (the Nd2Fe14B grains).

3. **Rendering** - brightfield colours per phase, grain-to-grain brightness
   variation (orientation contrast), faint etched grain-boundary lines, fine
   mottling and polishing scratches, darker cores in oxides, an optical PSF
   blur, blue colour fringes just outside oxide particles, extended-depth-of-
   focus (EDF) artefacts (a few soft-edged locally blurred areas), a smooth
   illumination gradient (vignetting) and signal-dependent sensor noise.

4. **Masks** - ``mask_hq`` is the exact class map used for drawing;
   ``mask_lq`` is made from it by :func:`degrade_mask`, a generic model of the
   errors of a segmentation *model* (over-segmentation at edges, wrong labels on
   boundary pixels, small spurious objects, occasional large mislabelled
   regions). :func:`degrade_mask` works on any index mask.

Pixel-size details (PSF, fringes, texture grain, boundary roughness, LQ dilation)
scale with ``grain_diameter_px / 42`` (``NdFeBParams.length_scale``), so an image
made with smaller grains looks like a downscaled default image.

Everything is driven by ``np.random.default_rng`` streams derived from the seed
(no global random state), so results are fully deterministic.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.special import ndtr

__all__ = [
    "CLASS_NAMES",
    "TARGET_FRACTIONS",
    "CLASS_COLORS",
    "Micrograph",
    "NdFeBParams",
    "generate_ndfeb",
    "degrade_mask",
    "colorize_mask",
]

CLASS_NAMES = ("matrix", "eta", "oxide", "nd_rich")
TARGET_FRACTIONS = {"matrix": 0.788, "eta": 0.076, "oxide": 0.080, "nd_rich": 0.056}

#: Display colours for masks (not the micrograph colours), RGB uint8, one per class.
CLASS_COLORS = np.array(
    [
        [40, 40, 40],  # matrix
        [230, 160, 30],  # eta
        [40, 110, 230],  # oxide
        [235, 235, 235],  # nd_rich
    ],
    dtype=np.uint8,
)

MATRIX, ETA, OXIDE, ND_RICH = range(4)


# --------------------------------------------------------------------------- #
# data containers
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Micrograph:
    """A synthetic micrograph with its exact (HQ) and degraded (LQ) masks.

    Attributes
    ----------
    image : uint8 array (H, W, 3), RGB.
    mask_hq : uint8 array (H, W), class index (see ``CLASS_NAMES``); the exact
        class map used to draw ``image``.
    mask_lq : uint8 array (H, W), a "model-made" mask with realistic labelling
        errors (see :func:`degrade_mask`).
    seed : the seed the micrograph was generated from.
    blur_map : optional float32 array (H, W) in [0, 1]: weight of the local EDF
        blur at each pixel (diagnostic; ``None`` when not known).
    params : optional parameters used for generation.
    """

    image: np.ndarray
    mask_hq: np.ndarray
    mask_lq: np.ndarray
    seed: int
    blur_map: np.ndarray | None = field(default=None, repr=False)
    params: "NdFeBParams | None" = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:  # arrays need element-wise comparison
        if not isinstance(other, Micrograph):
            return NotImplemented
        return (
            self.seed == other.seed
            and np.array_equal(self.image, other.image)
            and np.array_equal(self.mask_hq, other.mask_hq)
            and np.array_equal(self.mask_lq, other.mask_lq)
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask_hq.shape

    def class_fractions(self, which: str = "hq") -> dict[str, float]:
        """Fraction of pixels of each class in the ``"hq"`` or ``"lq"`` mask."""
        if which not in ("hq", "lq"):
            raise ValueError(f"which must be 'hq' or 'lq', not {which!r}")
        mask = self.mask_hq if which == "hq" else self.mask_lq
        counts = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)]
        return {name: float(c) / mask.size for name, c in zip(CLASS_NAMES, counts)}

    @property
    def lq_error_rate(self) -> float:
        """Fraction of pixels where ``mask_lq`` differs from ``mask_hq``."""
        return float(np.count_nonzero(self.mask_lq != self.mask_hq)) / self.mask_hq.size


@dataclass(frozen=True)
class NdFeBParams:
    """Knobs of the synthetic NdFeB micrograph. All lengths are in pixels.

    Colours are linear-ish RGB in [0, 1] (before illumination and noise).
    """

    # --- size and grains -------------------------------------------------- #
    #: image size in pixels (the grain size does not scale with it)
    width: int = 2752
    height: int = 2208
    #: mean grain diameter (equivalent circle diameter of the mean Voronoi cell)
    grain_diameter_px: float = 42.0
    #: random jitter of the seed lattice, as a fraction of the lattice spacing
    grain_jitter: float = 0.6
    #: fraction of seeds removed at random (gives a few larger grains)
    grain_drop_fraction: float = 0.12
    #: grain elongation along x (1 = equiaxed)
    grain_aspect: float = 1.08
    #: amplitude of the smooth coordinate perturbation, in grain diameters
    boundary_warp: float = 0.22
    #: amplitude (px) of the fine boundary roughness
    boundary_roughness_px: float = 1.2
    #: factor applied to all pixel-size knobs (boundary roughness, etched line
    #: width, texture grain, PSF, fringe width, EDF blur sigma, LQ dilation and
    #: spurious-object size); ``None``: ``grain_diameter_px / 42``, so an image with
    #: smaller grains looks like a downscaled version of the default
    length_scale: float | None = None

    # --- phase fractions --------------------------------------------------- #
    #: exact target area fractions of the phases (matrix = the rest)
    frac_eta: float = TARGET_FRACTIONS["eta"]
    frac_oxide: float = TARGET_FRACTIONS["oxide"]
    frac_nd_rich: float = TARGET_FRACTIONS["nd_rich"]

    # --- oxide particles ----------------------------------------------------- #
    #: median oxide particle radius, in grain diameters
    oxide_radius: float = 0.21
    #: log-normal sigma of oxide radii
    oxide_radius_sigma: float = 0.45
    #: fractions of oxide particles centred on triple junctions and on grain
    #: boundaries (the rest: anywhere)
    oxide_at_junctions: float = 0.6
    oxide_at_boundaries: float = 0.25
    #: relative roughness of oxide outlines
    oxide_shape_noise: float = 0.08

    # --- eta blobs ---------------------------------------------------------- #
    #: correlation length of the eta noise field, in grain diameters
    eta_scale: float = 0.8
    #: weight of the per-grain random value (blobs following grain boundaries)
    eta_grain_weight: float = 0.7

    # --- Nd-rich films ---------------------------------------------------- #
    #: share of the Nd-rich area in triple-junction pockets (the rest: films)
    pocket_share: float = 0.4
    #: minimum film half width (px): every film is at least a continuous line
    film_min_half_width_px: float = 0.55
    #: film preference spread (px, times the length scale): boundaries are ranked
    #: by a random value u in [0, 1); a boundary carries a film if u < t / spread
    #: and its half width is min + (t - spread * u) * (smooth variation), where t
    #: is set by the target fraction.  Larger: fewer, thicker-varying films.
    film_selectivity: float = 3.0
    #: log-normal spread of the extra film width along a boundary
    film_width_sigma: float = 0.4

    # --- colours (RGB, 0..1) -------------------------------------------- #
    #: base brightfield colour of each phase: grey-beige matrix, slightly darker
    #: and yellower eta (low contrast on purpose), grey-blue oxide, whitish Nd-rich
    color_matrix: tuple[float, float, float] = (0.62, 0.59, 0.53)
    color_eta: tuple[float, float, float] = (0.585, 0.555, 0.48)
    color_oxide: tuple[float, float, float] = (0.395, 0.405, 0.445)
    color_nd_rich: tuple[float, float, float] = (0.92, 0.905, 0.86)
    #: std of the per-grain brightness factor (orientation contrast)
    grain_contrast: float = 0.035
    #: std of the per-grain hue shift
    grain_tint: float = 0.004
    #: darkening of the (etched) grain-boundary lines in the matrix
    boundary_darkening: float = 0.16
    #: amplitude of the fine mottled texture
    texture_strength: float = 0.022
    #: polishing scratches per megapixel and their contrast
    scratches_per_mpx: float = 14.0
    scratch_strength: float = 0.035
    #: darkening of oxide cores relative to their rim
    oxide_core_darkening: float = 0.15

    # --- optics and sensor ---------------------------------------------- #
    #: sigma of the optical point-spread function
    psf_sigma: float = 0.75
    #: strength of the blue fringe just outside oxide particles
    fringe_strength: float = 0.55
    #: width (px) of the fringe
    fringe_width_px: float = 1.6
    #: EDF blurred regions per megapixel (at least one if > 0)
    blur_regions_per_mpx: float = 0.8
    #: radius range of the blurred regions, in grain diameters
    blur_region_radius: tuple[float, float] = (3.0, 8.0)
    #: Gaussian sigma range of the EDF blur
    blur_sigma: tuple[float, float] = (1.5, 3.0)
    #: vignetting (relative darkening ~ vignetting * r^2 / 2, r = 1 at the middle of
    #: the long edge) and amplitude of a smooth random illumination ripple
    vignetting: float = 0.14
    illumination_ripple: float = 0.025
    #: sensor noise: read noise std and shot-noise coefficient (std = sqrt(r^2 + s*I))
    read_noise: float = 0.008
    shot_noise: float = 0.00012

    # --- LQ mask --------------------------------------------------------- #
    #: target fraction of pixels where mask_lq != mask_hq
    lq_error_rate: float = 0.06
    #: large wrongly labelled regions per megapixel (Poisson mean)
    lq_large_regions_per_mpx: float = 1.0
    #: shares of the remaining error budget: edge dilation, boundary flips, spurious blobs
    lq_dilation_share: float = 0.55
    lq_boundary_share: float = 0.32
    lq_spurious_share: float = 0.13
    #: maximum over-segmentation (px) of phase objects in the LQ mask
    lq_max_dilation_px: float = 3.0

    #: KD-tree query threads (does not change the result)
    workers: int = 2

    @property
    def scale(self) -> float:
        """Effective :attr:`length_scale`."""
        return float(self.length_scale) if self.length_scale is not None else self.grain_diameter_px / 42.0


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ~``scale`` px.

    Large scales are computed on a coarse grid and interpolated (cheap).
    """
    h, w = shape
    scale = max(float(scale), 0.5)
    f = max(1, int(scale / 3.0))
    sh, sw = h // f + 3, w // f + 3
    white = rng.standard_normal((sh, sw), dtype=np.float32)
    g = ndi.gaussian_filter(white, scale / f, mode="wrap")
    if f > 1:
        g = _upsample_linear(g, f, h, w)
    g = g[:h, :w]
    g -= g.mean()
    s = g.std()
    if s > 0:
        g /= s
    return np.ascontiguousarray(g, dtype=np.float32)


def _upsample_linear(g: np.ndarray, f: int, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of ``g`` by an integer factor ``f``, cropped to (h, w).

    Sample ``j`` of the output lies at ``j / f`` in input coordinates (corner
    aligned), so both passes are single broadcast operations (no gathers).
    Needs ``(g.shape[0] - 1) * f >= h`` and ``(g.shape[1] - 1) * f >= w``.
    """
    wm = (np.arange(f, dtype=np.float32) / f)
    vm = 1.0 - wm
    rows = (g[:-1, None, :] * vm[None, :, None] + g[1:, None, :] * wm[None, :, None])
    rows = rows.reshape(-1, g.shape[1])[:h]
    out = rows[:, :-1, None] * vm + rows[:, 1:, None] * wm
    return out.reshape(h, -1)[:, :w]


def _select_lowest(score: np.ndarray, allowed: np.ndarray | None, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` pixels with the lowest ``score`` among ``allowed``."""
    out = np.zeros(score.shape, dtype=bool)
    flat_out = out.ravel()
    if allowed is None:
        idx = np.arange(score.size)
    else:
        idx = np.flatnonzero(allowed)
    k = int(min(max(k, 0), idx.size))
    if k == 0:
        return out
    vals = score.ravel()[idx]
    if k < idx.size:
        part = np.argpartition(vals, k - 1)[:k]
        flat_out[idx[part]] = True
    else:
        flat_out[idx] = True
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def colorize_mask(mask: np.ndarray, colors: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 rendering of an index mask (for previews)."""
    colors = CLASS_COLORS if colors is None else np.asarray(colors, dtype=np.uint8)
    if mask.max(initial=0) >= len(colors):
        rng = np.random.default_rng(12345)
        extra = rng.integers(0, 256, (int(mask.max()) + 1 - len(colors), 3), dtype=np.uint8)
        colors = np.concatenate([colors, extra])
    return colors[mask]


# --------------------------------------------------------------------------- #
# geometry
# --------------------------------------------------------------------------- #
def _grain_seeds(rng: np.random.Generator, p: NdFeBParams) -> np.ndarray:
    """Jittered hexagonal lattice of grain seeds covering the image plus a margin.

    Returns (N, 2) float array of (y, x) in the *stretched* Voronoi space
    (x divided by ``grain_aspect``).
    """
    d = p.grain_diameter_px
    # a hexagonal cell of area A = pi d^2 / 4 has lattice spacing a with A = sqrt(3)/2 a^2;
    # dropped seeds enlarge the mean cell, so compensate.
    keep = 1.0 - p.grain_drop_fraction
    area = math.pi * d * d / 4.0 * keep
    a = math.sqrt(area * 2.0 / math.sqrt(3.0))
    dy = a * math.sqrt(3.0) / 2.0
    margin = 2.0 * d
    h = p.height + 2 * margin
    w = p.width / p.grain_aspect + 2 * margin
    ny = int(math.ceil(h / dy)) + 1
    nx = int(math.ceil(w / a)) + 1
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    ys = ii * dy - margin
    xs = jj * a + (ii % 2) * (a / 2.0) - margin
    pts = np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.float64)
    pts += rng.uniform(-0.5, 0.5, pts.shape) * p.grain_jitter * a
    pts = pts[rng.random(len(pts)) >= p.grain_drop_fraction]
    return pts


def _voronoi(rng: np.random.Generator, p: NdFeBParams):
    """Perturbed Voronoi tessellation.

    Returns
    -------
    grain : int32 (H, W) grain label
    gb : float32 (H, W) distance (px) to the nearest grain boundary
    tj : float32 (H, W) distance to the second-nearest boundary (small near
        triple junctions)
    s2 : int32 (H, W) label of the neighbouring grain across the nearest boundary
    """
    H, W = p.height, p.width
    d = p.grain_diameter_px
    seeds = _grain_seeds(rng, p)
    tree = cKDTree(seeds)

    warp = p.boundary_warp * d
    wy = _smooth_noise(rng, (H, W), 0.9 * d) * warp
    wx = _smooth_noise(rng, (H, W), 0.9 * d) * warp
    if p.boundary_roughness_px > 0:
        rough = p.boundary_roughness_px * p.scale
        wy += _smooth_noise(rng, (H, W), max(1.0, 2.5 * p.scale)) * rough
        wx += _smooth_noise(rng, (H, W), max(1.0, 2.5 * p.scale)) * rough

    grain = np.empty((H, W), dtype=np.int32)
    s2 = np.empty((H, W), dtype=np.int32)
    gb = np.empty((H, W), dtype=np.float32)
    tj = np.empty((H, W), dtype=np.float32)
    rows = max(1, 600_000 // max(W, 1))
    seed_y = np.ascontiguousarray(seeds[:, 0], dtype=np.float32)
    seed_x = np.ascontiguousarray(seeds[:, 1], dtype=np.float32)
    xs = np.arange(W, dtype=np.float64)
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        yy = (np.arange(r0, r1, dtype=np.float64)[:, None] + wy[r0:r1]).ravel()
        xx = ((xs[None, :] + wx[r0:r1]) / p.grain_aspect).ravel()
        q = np.stack([yy, xx], axis=1)
        dist, idx = tree.query(q, k=3, workers=p.workers)
        # distance to the bisector between seed 1 and seed j:
        # (|q - sj|^2 - |q - s1|^2) / (2 |sj - s1|)
        d2 = dist * dist
        sy, sx = seed_y[idx], seed_x[idx]  # (n, 3)
        sep12 = np.hypot(sy[:, 1] - sy[:, 0], sx[:, 1] - sx[:, 0])
        sep13 = np.hypot(sy[:, 2] - sy[:, 0], sx[:, 2] - sx[:, 0])
        b12 = ((d2[:, 1] - d2[:, 0]) / (2.0 * sep12)).astype(np.float32)
        b13 = ((d2[:, 2] - d2[:, 0]) / (2.0 * sep13)).astype(np.float32)
        grain[r0:r1] = idx[:, 0].reshape(r1 - r0, W)
        s2[r0:r1] = idx[:, 1].reshape(r1 - r0, W)
        gb[r0:r1] = b12.reshape(r1 - r0, W)
        tj[r0:r1] = np.maximum(b12, b13).reshape(r1 - r0, W)
    return grain, gb, tj, s2, len(seeds)


def _oxide_score(rng, p: NdFeBParams, gb, tj, n_target_px):
    """Oxide particle field: min over particles of (distance / radius), noisy.

    Returns (score, particle_id); pixels far from any particle get +inf.
    """
    H, W = p.height, p.width
    d = p.grain_diameter_px
    r_med = p.oxide_radius * d
    sig = p.oxide_radius_sigma
    mean_area = math.pi * r_med**2 * math.exp(2 * sig**2)
    n = max(1, int(round(1.05 * n_target_px / mean_area)))
    radii = r_med * np.exp(sig * rng.standard_normal(n))
    radii = np.clip(radii, 1.5, 4.0 * r_med)

    # centres: triple junctions, grain boundaries, anywhere
    u = rng.random(n)
    kind = np.where(u < p.oxide_at_junctions, 0, np.where(u < p.oxide_at_junctions + p.oxide_at_boundaries, 1, 2))
    centres = np.empty((n, 2), dtype=np.int64)
    # sample candidate positions on a sparse grid to stay cheap at full size
    step = 2
    tj_s = tj[::step, ::step]
    gb_s = gb[::step, ::step]
    pools = [
        np.flatnonzero(tj_s.ravel() < 1.5),
        np.flatnonzero(gb_s.ravel() < 1.0),
        None,
    ]
    ws = tj_s.shape[1]
    for k, pool in enumerate(pools):
        sel = np.flatnonzero(kind == k)
        if sel.size == 0:
            continue
        if pool is None or pool.size == 0:
            centres[sel, 0] = rng.integers(0, H, sel.size)
            centres[sel, 1] = rng.integers(0, W, sel.size)
        else:
            pick = pool[rng.integers(0, pool.size, sel.size)]
            centres[sel, 0] = (pick // ws) * step
            centres[sel, 1] = (pick % ws) * step

    score = np.full((H, W), np.inf, dtype=np.float32)
    pid = np.full((H, W), -1, dtype=np.int32)
    shape_noise = _smooth_noise(rng, (H, W), max(2.5, 0.6 * r_med)) * p.oxide_shape_noise
    # elongation / orientation per particle (slightly elliptical particles)
    ecc = np.exp(0.18 * rng.standard_normal(n))
    ang = rng.uniform(0, np.pi, n)
    reach = 2.2
    for i in range(n):
        r = radii[i]
        cy, cx = centres[i]
        R = int(math.ceil(reach * r * max(ecc[i], 1 / ecc[i]))) + 1
        y0, y1 = max(0, cy - R), min(H, cy + R + 1)
        x0, x1 = max(0, cx - R), min(W, cx + R + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        c, s = math.cos(ang[i]), math.sin(ang[i])
        u_ = (c * xx + s * yy) / ecc[i]
        v_ = (-s * xx + c * yy) * ecc[i]
        val = np.sqrt(u_ * u_ + v_ * v_) / r + shape_noise[y0:y1, x0:x1]
        win = score[y0:y1, x0:x1]
        better = val < win
        win[better] = val[better]
        pid[y0:y1, x0:x1][better] = i
    return score, pid, radii.astype(np.float32)


def _phases(rng, p: NdFeBParams, grain, gb, tj, s2, n_seeds):
    """Class map from the grain structure (exact target pixel counts)."""
    H, W = p.height, p.width
    N = H * W
    d = p.grain_diameter_px
    k_ox = int(round(p.frac_oxide * N))
    k_eta = int(round(p.frac_eta * N))
    k_nd = int(round(p.frac_nd_rich * N))

    mask = np.zeros((H, W), dtype=np.uint8)

    # oxide: rounded particles
    ox_score, pid, radii = _oxide_score(rng, p, gb, tj, k_ox)
    ox = _select_lowest(ox_score, np.isfinite(ox_score), k_ox)
    ox_t = float(ox_score[ox].max()) if ox.any() else 1.0
    if ox.sum() < k_ox:  # not enough particle area (tiny images): grow by distance
        extra = ndi.distance_transform_edt(~ox).astype(np.float32)
        ox |= _select_lowest(extra, ~ox, k_ox - int(ox.sum()))
    mask[ox] = OXIDE

    # eta: irregular blobs, partly following grains
    grain_val = rng.standard_normal(n_seeds).astype(np.float32)
    eta_score = -(
        _smooth_noise(rng, (H, W), p.eta_scale * d)
        + p.eta_grain_weight * grain_val[grain]
        + 0.3 * _smooth_noise(rng, (H, W), 0.2 * d)
    )
    eta = _select_lowest(eta_score, ~ox, k_eta)
    mask[eta] = ETA
    del eta_score

    # Nd-rich: pockets at triple junctions (their own share of the area) ...
    allowed = ~(ox | eta)
    k_pocket = int(round(p.pocket_share * k_nd))
    pocket_score = tj * np.exp(-0.35 * _smooth_noise(rng, (H, W), 0.4 * d))
    nd = _select_lowest(pocket_score, allowed, k_pocket)
    del pocket_score
    # ... and films along grain boundaries.  Score = (distance to the boundary
    # beyond a minimum half width, relative to a width varying smoothly along
    # the boundary) + a per-boundary penalty; the quantile threshold then gives
    # films to the boundaries with the lowest penalty, each at least a line.
    bval = rng.standard_normal(n_seeds).astype(np.float32)
    u = ndtr((bval[grain] + bval[s2]) * np.float32(1.0 / math.sqrt(2.0)))  # one value per boundary
    width = np.exp(p.film_width_sigma * _smooth_noise(rng, (H, W), 0.7 * d))
    film_score = np.maximum(gb - p.film_min_half_width_px, 0.0) / width
    film_score += np.float32(p.film_selectivity * p.scale) * u
    del u, width
    nd |= _select_lowest(film_score, allowed & ~nd, k_nd - int(nd.sum()))
    del film_score
    mask[nd] = ND_RICH
    # approximate signed distance (px) to the oxide outline, from the particle
    # score (score = r / radius + noise; the outline is at score == ox_t)
    rad = np.where(pid >= 0, radii[np.maximum(pid, 0)], 0.0).astype(np.float32)
    fin = np.isfinite(ox_score)
    ox_dist = np.full(ox_score.shape, np.inf, dtype=np.float32)
    ox_dist[fin] = (ox_score[fin] - ox_t) * rad[fin]
    return mask, pid, ox_dist


# --------------------------------------------------------------------------- #
# rendering
# --------------------------------------------------------------------------- #
def _render(rng, p: NdFeBParams, mask, grain, gb, pid, ox_dist, n_seeds):
    H, W = p.height, p.width
    d = p.grain_diameter_px
    colors = np.array([p.color_matrix, p.color_eta, p.color_oxide, p.color_nd_rich], dtype=np.float32)

    # per-(class, grain) colour table: grains (matrix and eta) get a brightness
    # factor and a slight tint (orientation contrast); one gather builds the image
    gain = (1.0 + p.grain_contrast * rng.standard_normal(n_seeds)).astype(np.float32)
    tint = (p.grain_tint * rng.standard_normal((n_seeds, 3))).astype(np.float32)
    table = np.repeat(colors[:, None, :], n_seeds, axis=1)
    for c in (MATRIX, ETA):
        table[c] = table[c] * gain[:, None] + tint
    img = table.reshape(-1, 3)[mask.astype(np.intp) * n_seeds + grain]  # (H, W, 3)
    del table

    # luminance factor: etched boundary lines, oxide cores, texture, scratches
    is_grain = mask <= ETA
    sc = p.scale
    line_w = 0.9 * max(sc, 0.6)
    lum = np.where(is_grain, 1.0 - p.boundary_darkening * np.exp(-((gb / line_w) ** 2)), 1.0).astype(np.float32)

    oxm = mask == OXIDE
    if oxm.any():
        # depth inside the particle (px); 2 px where unknown (fallback growth)
        inside = np.where(np.isfinite(ox_dist[oxm]), np.clip(-ox_dist[oxm], 0.0, None), 2.0)
        core = 1.0 - p.oxide_core_darkening * (1.0 - np.exp(-np.maximum(inside - 1.0, 0.0) / 3.0))
        n_p = int(pid.max()) + 1
        pgain = (1.0 + 0.06 * rng.standard_normal(max(n_p, 1))).astype(np.float32)
        pp = pid[oxm]
        lum[oxm] *= core * np.where(pp >= 0, pgain[np.maximum(pp, 0)], 1.0)

    # fine mottling + medium blotches
    lum *= 1.0 + p.texture_strength * 0.7 * (
        _smooth_noise(rng, (H, W), max(0.8, 1.2 * sc)) + _smooth_noise(rng, (H, W), max(1.5, 6.0 * sc))
    )

    # polishing scratches: long thin straight lines, mostly one direction
    n_scr = rng.poisson(p.scratches_per_mpx * H * W / 1e6)
    if n_scr > 0 and p.scratch_strength > 0:
        from skimage.draw import line_aa

        scr = np.zeros((H, W), dtype=np.float32)
        main_dir = rng.uniform(0, np.pi)
        diag = math.hypot(H, W)
        for _ in range(n_scr):
            a = main_dir + rng.normal(0, 0.25) if rng.random() < 0.75 else rng.uniform(0, np.pi)
            L = rng.uniform(0.1, 0.6) * diag
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            dy, dx = math.sin(a) * L / 2, math.cos(a) * L / 2
            rr, cc, val = line_aa(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
            ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            amp = rng.uniform(0.3, 1.0) * (1 if rng.random() < 0.6 else -1)
            # intensity fades in and out along the scratch
            t = np.linspace(0, np.pi, ok.size)
            scr[rr[ok], cc[ok]] += (amp * val * np.sin(t))[ok]
        scr = ndi.gaussian_filter(scr, 0.6)
        lum *= 1.0 + p.scratch_strength * np.clip(scr, -1.5, 1.5)
        del scr
    img *= lum[..., None]
    del lum

    # optical PSF
    if p.psf_sigma > 0:
        psf = max(0.45, p.psf_sigma * sc)
        for c in range(3):
            img[..., c] = ndi.gaussian_filter(img[..., c], psf)

    # blue fringes just outside oxide particles
    if p.fringe_strength > 0 and oxm.any():
        outside = ox_dist  # inf far from particles
        fw = max(0.7, p.fringe_width_px * sc)
        near = (~oxm) & (outside < 0.75 * fw + 3.0 * fw)
        wf = p.fringe_strength * np.exp(-(((outside[near] - 0.75 * fw) / fw) ** 2))
        shift = np.array([-0.10, -0.03, 0.09], dtype=np.float32)
        img[near] += wf[:, None].astype(np.float32) * shift
        del outside, wf, near

    # EDF artefacts: a few soft-edged locally blurred areas
    blur_map = np.zeros((H, W), dtype=np.float32)
    if p.blur_regions_per_mpx > 0:
        n_blur = max(1, rng.poisson(p.blur_regions_per_mpx * H * W / 1e6))
        for _ in range(n_blur):
            r = rng.uniform(*p.blur_region_radius) * d
            r = min(r, 0.35 * min(H, W))
            sigma = max(0.8, rng.uniform(*p.blur_sigma) * sc)
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            R = int(1.4 * r) + 1
            y0, y1 = max(0, int(cy) - R), min(H, int(cy) + R + 1)
            x0, x1 = max(0, int(cx) - R), min(W, int(cx) + R + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
            xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
            rho = np.sqrt(yy * yy + xx * xx) / r
            wobble = 0.2 * _smooth_noise(rng, (y1 - y0, x1 - x0), 0.3 * r)
            m = _smoothstep((1.0 - rho + wobble) / 0.45)
            m = np.maximum(blur_map[y0:y1, x0:x1], m)
            blur_map[y0:y1, x0:x1] = m
            m0 = 3 * int(math.ceil(sigma))
            by0, by1 = max(0, y0 - m0), min(H, y1 + m0)
            bx0, bx1 = max(0, x0 - m0), min(W, x1 + m0)
            crop = img[by0:by1, bx0:bx1]
            blurred = ndi.gaussian_filter(crop, (sigma, sigma, 0))
            blurred = blurred[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
            cur = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = cur + m[..., None] * (blurred - cur)

    # illumination: vignetting + smooth ripple, slight warm/cool shift to the corners
    yy = (np.arange(H, dtype=np.float32) - (H - 1) / 2.0 + rng.uniform(-0.1, 0.1) * H) / (max(H, W) / 2.0)
    xx = (np.arange(W, dtype=np.float32) - (W - 1) / 2.0 + rng.uniform(-0.1, 0.1) * W) / (max(H, W) / 2.0)
    rho2 = yy[:, None] ** 2 + xx[None, :] ** 2
    illum = 1.0 - p.vignetting * rho2 / 2.0
    illum += p.illumination_ripple * _smooth_noise(rng, (H, W), max(H, W) / 4.0)
    illum *= rng.uniform(0.95, 1.05)
    img *= illum[..., None]
    img[..., 2] *= 1.0 + 0.02 * rho2  # bluish corners
    del illum, rho2

    # sensor noise (signal dependent), per channel
    np.clip(img, 0.0, 1.0, out=img)
    std = np.sqrt(p.read_noise**2 + p.shot_noise * img)
    img += std * rng.standard_normal(img.shape, dtype=np.float32)
    del std
    np.clip(img, 0.0, 1.0, out=img)
    out = (img * 255.0 + 0.5).astype(np.uint8)
    return out, blur_map


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def generate_ndfeb(seed: int = 0, params: NdFeBParams | None = None, **overrides) -> Micrograph:
    """Generate a synthetic brightfield EDF micrograph of a sintered NdFeB magnet.

    Parameters
    ----------
    seed : integer seed; the output is a deterministic function of ``seed`` and
        the parameters.
    params : :class:`NdFeBParams` (defaults if ``None``).
    **overrides : any :class:`NdFeBParams` field, e.g. ``width=512, height=512``.

    Returns
    -------
    :class:`Micrograph` with ``image`` (uint8 RGB), ``mask_hq`` (exact class map),
    ``mask_lq`` (degraded copy, see :func:`degrade_mask`) and ``blur_map``.
    """
    p = params if params is not None else NdFeBParams()
    if overrides:
        p = dataclasses.replace(p, **overrides)
    if p.width < 8 or p.height < 8:
        raise ValueError("image must be at least 8 x 8 pixels")
    if p.frac_eta + p.frac_oxide + p.frac_nd_rich >= 1.0:
        raise ValueError("phase fractions must sum to less than 1")

    ss = np.random.SeedSequence(int(seed))
    geo_ss, phase_ss, render_ss, lq_ss = ss.spawn(4)
    grain, gb, tj, s2, n_seeds = _voronoi(np.random.default_rng(geo_ss), p)
    mask, pid, ox_dist = _phases(np.random.default_rng(phase_ss), p, grain, gb, tj, s2, n_seeds)
    del tj, s2
    image, blur_map = _render(np.random.default_rng(render_ss), p, mask, grain, gb, pid, ox_dist, n_seeds)
    del grain, gb, pid, ox_dist
    mask_lq = degrade_mask(
        mask,
        seed=int(lq_ss.generate_state(1)[0]),
        error_rate=p.lq_error_rate,
        num_classes=len(CLASS_NAMES),
        background=MATRIX,
        large_regions_per_mpx=p.lq_large_regions_per_mpx,
        dilation_share=p.lq_dilation_share,
        boundary_share=p.lq_boundary_share,
        spurious_share=p.lq_spurious_share,
        max_dilation_px=max(1.0, p.lq_max_dilation_px * p.scale),
        spurious_radius=(1, max(1, int(round(3 * p.scale)))),
    )
    return Micrograph(image=image, mask_hq=mask, mask_lq=mask_lq, seed=int(seed), blur_map=blur_map, params=p)


def degrade_mask(
    mask_hq: np.ndarray,
    seed: int,
    error_rate: float = 0.06,
    num_classes: int = 4,
    *,
    background: int | None = None,
    large_regions_per_mpx: float = 1.0,
    large_region_min_px: int = 40,
    large_region_max_share: float = 0.3,
    dilation_share: float = 0.55,
    boundary_share: float = 0.32,
    spurious_share: float = 0.13,
    max_dilation_px: float = 3.0,
    spurious_radius: tuple[int, int] = (1, 3),
) -> np.ndarray:
    """Simulate the labelling errors of a segmentation model on an index mask.

    Error model (applied in this order, on a copy of ``mask_hq``):

    1. **Large wrong regions** - a Poisson number (mean
       ``large_regions_per_mpx`` per megapixel, so "occasionally one" on small
       masks) of whole connected objects of a non-background class get another
       class (e.g. an eta blob labelled matrix, an oxide labelled eta). Each is
       at most ``large_region_max_share`` of the error budget.
    2. **Over-segmentation at edges** - in smoothly varying random places,
       non-background objects grow into the background by 1..``max_dilation_px``.
    3. **Wrong boundary labels** - pixels on class boundaries take the label of
       a neighbour (in small clusters).
    4. **Spurious objects** - tiny blobs (radius ``spurious_radius``) of a wrong
       class inside the background.

    The remaining error budget ``error_rate * size`` (after step 1) is split
    between steps 2-4 by the ``*_share`` weights; every step picks exactly its
    share of candidate pixels, so the disagreement with ``mask_hq`` is close to
    ``error_rate`` (lower only if a mask has too few candidate pixels, e.g. no
    boundaries at all).

    Parameters
    ----------
    mask_hq : 2-D integer array with values in ``0 .. num_classes - 1``.
    seed : integer seed (deterministic output).
    error_rate : target fraction of changed pixels.
    num_classes : number of classes (>= 2).
    background : class treated as background; default: the most frequent class.

    Returns
    -------
    uint8 array (same shape) if ``num_classes <= 256``, else int32.
    """
    mask_hq = np.asarray(mask_hq)
    if mask_hq.ndim != 2:
        raise ValueError("mask_hq must be 2-D")
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2")
    if not 0.0 <= error_rate < 0.5:
        raise ValueError("error_rate must be in [0, 0.5)")
    if mask_hq.size and (mask_hq.min() < 0 or mask_hq.max() >= num_classes):
        raise ValueError("mask values must be in 0 .. num_classes - 1")
    out_dtype = np.uint8 if num_classes <= 256 else np.int32
    hq = mask_hq.astype(out_dtype)
    lq = hq.copy()
    H, W = hq.shape
    N = hq.size
    if N == 0 or error_rate == 0:
        return lq
    rng = np.random.default_rng(seed)
    counts = np.bincount(hq.ravel(), minlength=num_classes)
    bg = int(np.argmax(counts)) if background is None else int(background)
    present = np.flatnonzero(counts)
    fg_classes = [c for c in present if c != bg]
    target = int(round(error_rate * N))

    def n_changed() -> int:
        return int(np.count_nonzero(lq != hq))

    def other_class(c: int) -> int:
        choices = [k for k in range(num_classes) if k != c]
        # prefer classes present in the mask (more realistic confusions)
        pref = [k for k in choices if counts[k] > 0]
        pool = pref if pref else choices
        return int(pool[rng.integers(0, len(pool))])

    # 1. large wrongly labelled regions
    n_large = rng.poisson(large_regions_per_mpx * N / 1e6)
    if n_large > 0 and fg_classes:
        cap = max(large_region_min_px, large_region_max_share * target)
        cands = []  # (class, labels, label_id)
        for c in fg_classes:
            lab, n = ndi.label(hq == c)
            if n == 0:
                continue
            sizes = np.bincount(lab.ravel())[1:]
            ok = np.flatnonzero((sizes >= large_region_min_px) & (sizes <= cap)) + 1
            if ok.size:
                cands.append((c, lab, ok))
        for _ in range(n_large):
            if not cands:
                break
            c, lab, ok = cands[rng.integers(0, len(cands))]
            lid = ok[rng.integers(0, ok.size)]
            lq[lab == lid] = other_class(c)
        del cands

    used = n_changed()
    remaining = max(0, target - used)
    tot_share = dilation_share + boundary_share + spurious_share
    if remaining == 0 or tot_share <= 0:
        return lq
    b_dil = int(round(remaining * dilation_share / tot_share))
    b_bnd = int(round(remaining * boundary_share / tot_share))

    # 2. over-segmentation: objects grow into the background in places
    if b_dil > 0 and fg_classes:
        fg = hq != bg
        dist, (iy, ix) = ndi.distance_transform_edt(~fg, return_indices=True)
        radius = 1.0 + (max_dilation_px - 1.0) * _smoothstep(0.5 + 0.35 * _smooth_noise(rng, (H, W), 10.0))
        cand = (~fg) & (dist <= radius) & (lq == hq)
        place = _smooth_noise(rng, (H, W), 18.0)
        sel = _select_lowest(-place, cand, b_dil)
        lq[sel] = hq[iy[sel], ix[sel]]
        del dist, iy, ix, cand, place, sel

    # 3. wrong labels on boundary pixels (take a neighbour's label)
    if b_bnd > 0:
        mx = ndi.maximum_filter(lq, size=3)
        mn = ndi.minimum_filter(lq, size=3)
        cand = ((mx != lq) | (mn != lq)) & (lq == hq)
        if cand.any():
            pick_max = np.where(
                (mx != lq) & (mn != lq), rng.random((H, W)) < 0.5, mx != lq
            )
            repl = np.where(pick_max, mx, mn)
            prio = _smooth_noise(rng, (H, W), 3.0) + 0.8 * rng.standard_normal((H, W), dtype=np.float32)
            sel = _select_lowest(-prio, cand, b_bnd)
            lq[sel] = repl[sel]
            del repl, prio, sel, pick_max
        del mx, mn, cand

    # 4. spurious tiny objects of a wrong class inside the background
    wrong_classes = fg_classes if fg_classes else [k for k in range(num_classes) if k != bg]
    r_lo, r_hi = int(spurious_radius[0]), int(spurious_radius[1])
    stamps = []
    for r in range(max(1, r_lo), max(r_lo, r_hi) + 1):
        oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
        rr = np.hypot(oy, ox)
        keep = rr <= r + 0.3
        stamps.append((r, oy[keep], ox[keep], rr[keep]))
    for _round in range(4):
        need = target - n_changed()
        if need <= max(10, 0.002 * target):
            break
        free = np.flatnonzero(((hq == bg) & (lq == hq)).ravel())
        if free.size == 0:
            break
        mean_area = np.mean([len(s[1]) for s in stamps]) * 0.8
        n_blobs = max(1, int(need / mean_area))
        centres = free[rng.integers(0, free.size, n_blobs)]
        cy, cx = centres // W, centres % W
        which = rng.integers(0, len(stamps), n_blobs)
        cls = np.asarray(wrong_classes)[rng.integers(0, len(wrong_classes), n_blobs)]
        order = rng.permutation(n_blobs)
        painted = 0
        for si, (r, oy, ox, rr) in enumerate(stamps):
            b = order[which[order] == si]
            if b.size == 0:
                continue
            # irregular blobs: randomly drop rim pixels
            yy = cy[b, None] + oy[None, :]
            xx = cx[b, None] + ox[None, :]
            keep = (rr[None, :] <= r - 0.5) | (rng.random(yy.shape) < 0.6)
            keep &= (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            cc = np.broadcast_to(cls[b, None], yy.shape)
            yk, xk, ck = yy[keep], xx[keep], cc[keep]
            ok = hq[yk, xk] == bg
            # limit to the budget (blobs are painted in random order)
            room = need - painted
            if room <= 0:
                break
            yk, xk, ck = yk[ok][:room], xk[ok][:room], ck[ok][:room]
            lq[yk, xk] = ck
            painted += yk.size
        if painted == 0:
            break
    return lq
