"""Component data sets generated offline from a seed (Yao et al. 2019, section 3.3).

* ``ts`` -- traffic signs built from four components (circle, slash, left-turn arrow, right-turn
  arrow), drawn analytically at 64 x 64 after a random projective ("affine + perspective-like skew")
  transform. Four sign types with component vectors: left turn ``[1, 0, 1, 0]``, right turn
  ``[1, 0, 0, 1]``, no left turn ``[1, 1, 1, 0]``, no right turn ``[1, 1, 0, 1]`` (the paper's example).
* ``multi-fmnist`` / ``multimnist`` -- two images of *different* classes of Fashion-MNIST / MNIST
  pasted into a 36 x 36 canvas, each at an independent random offset of 0..8 pixels per axis (a
  shift of +-4 around the centre, as Sabour et al.'s multiMNIST), overlaid by a clipped sum. The
  bounding boxes then overlap (28 - |dx|)(28 - |dy|) / 784 = 80 % on average (the paper's "80 %
  overlap"). Labels have two ones.

Labels of these *multi-label* data sets are multi-hot component vectors: ``Split.y`` is ``(N, n)``
int64 in {0, 1}, ``Split.num_classes`` is the number of components ``n``. Single-label code paths
(``bench run`` / ``train`` / ``calibrate``) refuse them with a one-line error
(:func:`harness.datasets.require_single_label`); ``bench decompose`` uses them.

Everything is a pure function of the seed (``numpy.random.default_rng``) and, for the overlays, of
the source images; generation is vectorised numpy and takes seconds, so nothing is cached on disk.
The checksum of a generated split is the sha256 of its uint8 images and labels (plus the source
split's checksum for the overlays); ``tests/datasets/test_synthetic.py`` pins them.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: components of ``ts``, in label order
TS_COMPONENTS = ("circle", "slash", "left arrow", "right arrow")
#: the four sign types and their component vectors (Yao et al. section 3.3)
TS_SIGNS: dict[str, tuple[int, int, int, int]] = {
    "left turn": (1, 0, 1, 0),
    "right turn": (1, 0, 0, 1),
    "no left turn": (1, 1, 1, 0),
    "no right turn": (1, 1, 0, 1),
}
TS_SIZE = 64
#: images per sign type in each generated split
TS_PER_TYPE = {"train": 1800, "val": 200, "test": 500}
TS_SEEDS = {"train": 1701, "val": 1702, "test": 1703}

OVERLAY_SIZE = 36
OVERLAY_MAX_OFFSET = 8  # offsets 0..8 per axis in the 36 x 36 canvas = shifts of -4..+4
#: number of overlay images generated per split, and their seeds
OVERLAY_COUNT = {"train": 20000, "val": 2000, "test": 4000}
OVERLAY_SEEDS = {"train": 1711, "val": 1712, "test": 1713}


# --- ts -----------------------------------------------------------------------------------------

def _seg_dist(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance of points (px, py) to the segment a-b."""
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


def _triangle_dist(px, py, tip, base_a, base_b) -> np.ndarray:
    """-1 inside the triangle, else the distance to its edges (enough for a filled arrow head)."""
    def side(p, q):
        return (q[0] - p[0]) * (py - p[1]) - (q[1] - p[1]) * (px - p[0])

    s1, s2, s3 = side(tip, base_a), side(base_a, base_b), side(base_b, tip)
    inside = ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))
    d = np.minimum(np.minimum(_seg_dist(px, py, tip, base_a), _seg_dist(px, py, base_a, base_b)), _seg_dist(px, py, base_b, tip))
    return np.where(inside, -1.0, d)


def _arrow_dist(u, v, width, mirror: bool) -> np.ndarray:
    """Signed-ish distance to a turn arrow: shaft up from the bottom, bend, head pointing left (right if mirrored)."""
    s = -1.0 if mirror else 1.0
    uu = u * s
    shaft = np.minimum(_seg_dist(uu, v, (0.18, 0.55), (0.18, -0.12)), _seg_dist(uu, v, (0.18, -0.12), (-0.22, -0.12)))
    head = _triangle_dist(uu, v, (-0.52, -0.12), (-0.2, -0.4), (-0.2, 0.16))
    return np.minimum(shaft - width, head)


def _component_intensity(d: np.ndarray, aa: float) -> np.ndarray:
    """Anti-aliased coverage from a (signed) distance: 1 inside, 0 outside, linear over ``aa``."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _random_homographies(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` 3x3 maps from canonical sign coordinates to output coordinates (both in [-1, 1]):
    rotation +-15 deg, shear +-0.15, scale 0.75..1.0 per axis, translation +-0.1 and a projective
    (perspective-like) skew of +-0.15 per axis."""
    rot = rng.uniform(-np.pi / 12, np.pi / 12, n)
    shear = rng.uniform(-0.15, 0.15, n)
    sx, sy = rng.uniform(0.75, 1.0, n), rng.uniform(0.75, 1.0, n)
    tx, ty = rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n)
    px, py = rng.uniform(-0.15, 0.15, n), rng.uniform(-0.15, 0.15, n)
    h = np.zeros((n, 3, 3))
    c, s = np.cos(rot), np.sin(rot)
    # A = R @ Shear @ Scale
    a00, a01 = sx * c, sy * (c * shear - s)
    a10, a11 = sx * s, sy * (s * shear + c)
    h[:, 0, 0], h[:, 0, 1], h[:, 0, 2] = a00, a01, tx
    h[:, 1, 0], h[:, 1, 1], h[:, 1, 2] = a10, a11, ty
    h[:, 2, 0], h[:, 2, 1], h[:, 2, 2] = px, py, 1.0
    return h


def render_signs(labels: np.ndarray, rng: np.random.Generator, size: int = TS_SIZE) -> np.ndarray:
    """Render one sign per row of ``labels`` ``(N, 4)`` (component vectors) -> uint8 ``(N, 1, size, size)``.

    Each pixel centre is mapped back through the inverse of a random homography to canonical
    coordinates, where every present component is evaluated analytically (ring, diagonal bar, turn
    arrows) with anti-aliased edges; the image is the pixel-wise maximum of the components. Stroke
    width varies by +-15 % per image.
    """
    n = len(labels)
    homs = _random_homographies(rng, n)
    widths = rng.uniform(0.85, 1.15, n)
    g = (np.arange(size) + 0.5) / size * 2 - 1
    gy, gx = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), np.ones(size * size)])  # (3, P)
    out = np.zeros((n, size * size), dtype=np.float64)
    aa = 2.0 / size
    for i in range(n):
        inv = np.linalg.inv(homs[i])
        q = inv @ pts
        u, v = q[0] / q[2], q[1] / q[2]
        w = widths[i]
        # local pixel size in canonical units (the transform scales by ~0.75..1)
        a = aa / max(1e-6, abs(np.linalg.det(homs[i][:2, :2])) ** 0.5)
        img = np.zeros(size * size)
        if labels[i, 0]:
            img = np.maximum(img, _component_intensity(np.abs(np.hypot(u, v) - 0.82) - 0.09 * w, a))
        if labels[i, 1]:
            img = np.maximum(img, _component_intensity(_seg_dist(u, v, (-0.58, -0.58), (0.58, 0.58)) - 0.08 * w, a))
        if labels[i, 2]:
            img = np.maximum(img, _component_intensity(_arrow_dist(u, v, 0.075 * w, mirror=False), a))
        if labels[i, 3]:
            img = np.maximum(img, _component_intensity(_arrow_dist(u, v, 0.075 * w, mirror=True), a))
        out[i] = img
    return np.rint(out * 255).astype(np.uint8).reshape(n, 1, size, size)


def generate_ts(split: str, *, per_type: int | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``ts`` split: uint8 images ``(N, 1, 64, 64)`` and int64 component vectors ``(N, 4)``, the four
    sign types interleaved (type ``i % 4`` of :data:`TS_SIGNS` at position ``i``)."""
    per_type = TS_PER_TYPE[split] if per_type is None else int(per_type)
    rng = np.random.default_rng(TS_SEEDS[split] if seed is None else seed)
    vectors = np.array(list(TS_SIGNS.values()), dtype=np.int64)
    labels = np.tile(vectors, (per_type, 1))
    return render_signs(labels, rng), labels


def sign_type(labels: np.ndarray) -> np.ndarray:
    """Index into :data:`TS_SIGNS` of each component vector (``-1`` for vectors that are no sign type)."""
    vectors = np.array(list(TS_SIGNS.values()))
    eq = (np.asarray(labels)[:, None, :] == vectors[None]).all(-1)
    return np.where(eq.any(1), eq.argmax(1), -1)


# --- overlays -----------------------------------------------------------------------------------

def make_overlays(images: np.ndarray, labels: np.ndarray, count: int, *, seed: int, num_classes: int = 10,
                  size: int = OVERLAY_SIZE, max_offset: int = OVERLAY_MAX_OFFSET) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlay pairs of ``images`` ``(M, 1, 28, 28)`` uint8 with different ``labels`` into ``size`` x ``size``.

    Image ``j`` takes source image ``perm[j % M]`` (a seeded permutation) and a random partner of a
    different class; each is pasted at an independent offset ``(dy, dx)`` in ``0..max_offset`` and the
    two are summed and clipped at 255. Returns images ``(count, 1, size, size)`` uint8, two-hot labels
    ``(count, num_classes)`` int64 and the offsets ``(count, 2, 2)`` (image, (dy, dx)).
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    m, h = len(images), images.shape[-1]
    if size - h != max_offset:
        raise ValueError(f"a {h}x{h} image needs a canvas of {h + max_offset} for offsets 0..{max_offset}, got {size}")
    if len(np.unique(labels)) < 2:
        raise ValueError("overlays need source images of at least two classes")
    rng = np.random.default_rng(seed)
    first = rng.permutation(m)[np.arange(count) % m]
    second = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:  # rejection sampling of partners of another class
        cand = rng.integers(0, m, todo.size)
        ok = labels[cand] != labels[first[todo]]
        second[todo[ok]] = cand[ok]
        todo = todo[~ok]
    offsets = rng.integers(0, max_offset + 1, (count, 2, 2))
    canvas = np.zeros((count, size, size), dtype=np.uint16)
    for j, idx in enumerate((first, second)):
        for r in range(count):
            dy, dx = offsets[r, j]
            canvas[r, dy : dy + h, dx : dx + h] += images[idx[r], 0]
    x = np.minimum(canvas, 255).astype(np.uint8)[:, None]
    y = np.zeros((count, num_classes), dtype=np.int64)
    y[np.arange(count), labels[first]] = 1
    y[np.arange(count), labels[second]] = 1
    return x, y, offsets


def overlap_fraction(offsets: np.ndarray, h: int = 28) -> np.ndarray:
    """Bounding-box overlap of the two pasted images, as a fraction of one image's area, per row."""
    d = np.abs(offsets[:, 0] - offsets[:, 1])
    return (h - d[:, 0]).clip(0) * (h - d[:, 1]).clip(0) / float(h * h)


def digest(*arrays: np.ndarray, extra: str = "") -> str:
    """sha256 over the arrays' dtypes, shapes and bytes (and ``extra``): the generated split's checksum."""
    hsh = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        hsh.update(f"{a.dtype.str}{a.shape}".encode())
        hsh.update(a.tobytes())
    hsh.update(extra.encode())
    return hsh.hexdigest()
