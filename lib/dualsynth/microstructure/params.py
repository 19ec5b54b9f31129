"""The classes of the NdFeB micrograph, the :class:`Micrograph` it makes and its knobs (:class:`NdFeBParams`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CLASS_NAMES", "TARGET_FRACTIONS", "CLASS_COLORS", "MATRIX", "ETA", "OXIDE", "ND_RICH", "Micrograph",
           "NdFeBParams"]

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
