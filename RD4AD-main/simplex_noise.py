"""3-D OpenSimplex noise as RD++'s official code draws it (``dataset/noise.py``, after lmas/opensimplex), in numpy.

RD++ (docs/reproduction.md#11-rd-a-second-method) corrupts a patch of each training image with fractal simplex noise:
``Simplex_CLASS().rand_3d_octaves((3, h, w), 6, 0.6)`` with its default base frequency of 32 pixels. The official
code evaluates each point with a branchy numba kernel that, per region of the point's lattice cell, adds the kernel
``max(0, 2 - |d|^2)^4`` times the gradient's dot product with the displacement of the region's vertices and of two
more chosen from the point's position. This module makes the same choices for every point at once (numpy ``where``
and ``select`` in place of the branches) and adds the same vertices in the same order. It needs no numba; the fields
equal the official ones to float64 rounding (``tests/test_rdpp_parity.py`` checks them against values of the
official code).

The permutation comes from one integer seed, as the official ``Simplex_CLASS.newSeed(seed)``; RD++'s data set
draws that seed once, so every noise patch of a run is a crop of one field (``rdpp.NoisePairs.field``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["NORM_3D", "OCTAVES", "PERSISTENCE", "BASE_FREQUENCY", "SEED_RANGE", "fractal_noise", "noise3",
           "permutation"]

# the official constants (OpenSimplex, 3-D)
STRETCH_3D = -1.0 / 6  # (1 / sqrt(3 + 1) - 1) / 3
SQUISH_3D = 1.0 / 3  # (sqrt(3 + 1) - 1) / 3
NORM_3D = 103
GRADIENTS_3D = np.array([
    -11, 4, 4, -4, 11, 4, -4, 4, 11,
    11, 4, 4, 4, 11, 4, 4, 4, 11,
    -11, -4, 4, -4, -11, 4, -4, -4, 11,
    11, -4, 4, 4, -11, 4, 4, -4, 11,
    -11, 4, -4, -4, 11, -4, -4, 4, -11,
    11, 4, -4, 4, 11, -4, 4, 4, -11,
    -11, -4, -4, -4, -11, -4, -4, -4, -11,
    11, -4, -4, 4, -11, -4, 4, -4, -11,
], dtype=np.int64)
# RD++'s call: rand_3d_octaves(shape, octaves=6, persistence=0.6) with the default frequency 32
OCTAVES = 6
PERSISTENCE = 0.6
BASE_FREQUENCY = 32.0
SEED_RANGE = (-10_000_000_000, 10_000_000_000)  # np.random.randint's bounds in the official newSeed()


def _wrap64(value: int) -> int:
    """``value`` as a signed 64-bit integer (the official ``ctypes.c_int64(value).value``)."""
    return (value + 2**63) % 2**64 - 2**63


def permutation(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The official ``_init(seed)``: a permutation of 0..255 from a 64-bit LCG, and each entry's gradient index."""
    perm = np.zeros(256, dtype=np.int64)
    source = list(range(256))
    for _ in range(3):
        seed = _wrap64(seed * 6364136223846793005 + 1442695040888963407)
    for i in range(255, -1, -1):
        seed = _wrap64(seed * 6364136223846793005 + 1442695040888963407)
        r = (seed + 31) % (i + 1)  # Python's modulo is never negative: the official "if r < 0" never fires
        perm[i] = source[r]
        source[r] = source[i]
    return perm, (perm % (len(GRADIENTS_3D) // 3)) * 3


def noise3(x: np.ndarray, y: np.ndarray, z: np.ndarray, perm: np.ndarray, grad_index: np.ndarray) -> np.ndarray:
    """OpenSimplex 3-D noise at the points (x, y, z) (float64 arrays of one shape), values within about [-1, 1].

    Each point lies in one of three regions of its skewed lattice cell: the tetrahedron at (0,0,0), the one at
    (1,1,1), or the octahedron between them. It sums the kernel of that region's 4 or 6 vertices and of two more
    vertices chosen from the point's position in the cell, in the official order (``_extra_vertices``).
    """
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    stretch = (x + y + z) * STRETCH_3D
    skewed = np.stack([x + stretch, y + stretch, z + stretch])
    cell = np.floor(skewed)
    inside = skewed - cell
    cell = cell.astype(np.int64)
    squish = cell.sum(axis=0) * SQUISH_3D
    origin = np.stack([x - (cell[0] + squish), y - (cell[1] + squish), z - (cell[2] + squish)])
    in_sum = inside.sum(axis=0)
    region = np.where(in_sum <= 1, 0, np.where(in_sum >= 2, 1, 2))
    value = np.zeros_like(x)
    for slot in range(6):  # the region's own vertices, in the official order (a tetrahedron has 4)
        vertex = np.moveaxis(_REGION_VERTICES[region, slot], -1, 0)
        value += np.where(_REGION_USES[region, slot], _contribution(vertex, cell, origin, perm, grad_index), 0.0)
    for vertex in _extra_vertices(inside, in_sum, region):
        value += _contribution(vertex, cell, origin, perm, grad_index)
    return value / NORM_3D


# each region's own lattice vertices, in the order the official code adds them (padded to 6; _REGION_USES marks them)
_REGION_VERTICES = np.array([[(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0), (0, 0, 0)],
                             [(1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0)],
                             [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)]], dtype=np.int64)
_REGION_USES = np.array([[True] * 4 + [False] * 2, [True] * 4 + [False] * 2, [True] * 6])


def _contribution(vertex: np.ndarray, cell: np.ndarray, origin: np.ndarray, perm: np.ndarray,
                  grad_index: np.ndarray) -> np.ndarray:
    """The kernel of lattice vertex ``cell + vertex`` (3, ...) at the points: ``max(0, 2 - |d|^2)^4 (g . d)``."""
    shift = vertex.sum(axis=0) * SQUISH_3D
    d = [origin[axis] - vertex[axis] - shift for axis in range(3)]
    attenuation = 2 - d[0] * d[0] - d[1] * d[1] - d[2] * d[2]
    lattice = cell + vertex
    index = grad_index[(perm[(perm[lattice[0] & 0xFF] + lattice[1]) & 0xFF] + lattice[2]) & 0xFF]
    dot = GRADIENTS_3D[index] * d[0] + GRADIENTS_3D[index + 1] * d[1] + GRADIENTS_3D[index + 2] * d[2]
    squared = attenuation * attenuation
    return np.where(attenuation > 0, squared * squared * dot, 0.0)


def _bits(point: np.ndarray) -> np.ndarray:
    """A vertex code (bit 1: x, 2: y, 4: z) as (3, ...) 0/1 offsets."""
    return np.stack([(point >> axis) & 1 for axis in range(3)])


def _axis_vertex(code: np.ndarray, values: tuple[int, int, int]) -> np.ndarray:
    """(3, ...) offsets: on the first axis whose bit ``code`` holds (x, then y, else z), ``values`` picks the vertex
    (x, y, z) of the code's position in the list; the official "if c & 1 ... elif c & 2 ... else" chains."""
    on_x, on_y = (code & 1) != 0, (code & 2) != 0
    return np.stack([np.where(on_x, v[0], np.where(on_y, v[1], v[2])) for v in _transpose(values)])


def _transpose(vertices: tuple) -> list[tuple[int, int, int]]:
    return [tuple(vertex[axis] for vertex in vertices) for axis in range(3)]


def _extra_vertices(inside: np.ndarray, in_sum: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two vertices outside the point's region that the official code adds (3, ...) each, region by region.

    In a tetrahedron it ranks the point's cell coordinates: when the region's corner ((0,0,0) or (1,1,1)) is one
    of the two closest vertices, the extras lie beyond the closest other one, else beyond the closest edge. In the
    octahedron it picks the two closest of its opposite vertex pairs and, by which side each lies on, (1,1,1),
    (0,0,0), a vertex at distance 2 along one axis or one with a -1.
    """
    xi, yi, zi = inside
    zero = np.zeros_like(region)
    # tetrahedron at (0,0,0): the two largest cell coordinates (points 1 = x, 2 = y, 4 = z)
    a_point, a_score, b_point, b_score = zero + 1, xi, zero + 2, yi
    b_to_z = (a_score >= b_score) & (zi > b_score)
    a_to_z = ~b_to_z & (a_score < b_score) & (zi > a_score)
    b_point, b_score = np.where(b_to_z, 4, b_point), np.where(b_to_z, zi, b_score)
    a_point, a_score = np.where(a_to_z, 4, a_point), np.where(a_to_z, zi, a_score)
    wins = 1 - in_sum
    corner = (wins > a_score) | (wins > b_score)
    closest = np.where(b_score > a_score, b_point, a_point)
    near0 = _axis_vertex(closest, ((1, -1, 0), (-1, 1, 0), (-1, 0, 1)))
    near1 = _axis_vertex(closest, ((1, 0, -1), (0, 1, -1), (0, -1, 1)))
    edge = _bits(a_point | b_point)
    low = (np.where(corner, near0, edge), np.where(corner, near1, 2 * edge - 1))
    # tetrahedron at (1,1,1): the two smallest (points 6 = x, 5 = y, 3 = z: the vertex without that axis)
    a_point, a_score, b_point, b_score = zero + 6, xi, zero + 5, yi
    b_to_z = (a_score <= b_score) & (zi < b_score)
    a_to_z = ~b_to_z & (a_score > b_score) & (zi < a_score)
    b_point, b_score = np.where(b_to_z, 3, b_point), np.where(b_to_z, zi, b_score)
    a_point, a_score = np.where(a_to_z, 3, a_point), np.where(a_to_z, zi, a_score)
    wins = 3 - in_sum
    corner = (wins < a_score) | (wins < b_score)
    closest = _bits(np.where(b_score < a_score, b_point, a_point))
    # x set: (2, ., .) and (1, ., .); y set: 1 on both, +1 on the second when x is set, else on the first; z: 1 then 2
    far0 = np.stack([2 * closest[0], closest[1] * (1 + (1 - closest[0])), closest[2]])
    far1 = np.stack([closest[0], closest[1] * (1 + closest[0]), 2 * closest[2]])
    edge = _bits(a_point & b_point)
    high = (np.where(corner, far0, edge), np.where(corner, far1, 2 * edge))
    # octahedron: the closer vertex of each opposite pair (0,0,1)|(1,1,0), (0,1,0)|(1,0,1), (1,0,0)|(0,1,1)
    p1, p2, p3 = xi + yi, xi + zi, yi + zi
    a_far, b_far = p1 > 1, p2 > 1
    a_score, a_point = np.where(a_far, p1 - 1, 1 - p1), np.where(a_far, 3, 4)
    b_score, b_point = np.where(b_far, p2 - 1, 1 - p2), np.where(b_far, 5, 2)
    c_far = p3 > 1
    score, c_point = np.where(c_far, p3 - 1, 1 - p3), np.where(c_far, 6, 1)
    replace_a = (a_score <= b_score) & (a_score < score)
    replace_b = ~replace_a & (a_score > b_score) & (b_score < score)
    a_point, a_far = np.where(replace_a, c_point, a_point), np.where(replace_a, c_far, a_far)
    b_point, b_far = np.where(replace_b, c_point, b_point), np.where(replace_b, c_far, b_far)
    minus_one = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))  # the first axis the code lacks gets -1
    double = ((2, 0, 0), (0, 2, 0), (0, 0, 2))  # the first axis the code holds gets 2
    same_side = a_far == b_far
    both_far = same_side & a_far
    ones = np.ones_like(_bits(zero))
    far_point, near_point = np.where(a_far, a_point, b_point), np.where(a_far, b_point, a_point)
    mid0 = np.where(both_far, ones, np.where(same_side, 0 * ones, _axis_vertex(7 - far_point, minus_one)))
    mid1 = np.where(both_far, _axis_vertex(a_point & b_point, double),
                    np.where(same_side, _axis_vertex(7 - (a_point | b_point), minus_one),
                             _axis_vertex(near_point, double)))
    return (np.select([region == 0, region == 1], [low[0], high[0]], mid0),
            np.select([region == 0, region == 1], [low[1], high[1]], mid1))


def fractal_noise(shape: tuple[int, int, int], seed: int, octaves: int = OCTAVES, persistence: float = PERSISTENCE,
                  frequency: float = BASE_FREQUENCY) -> np.ndarray:
    """The official ``Simplex_CLASS(seed).rand_3d_octaves(shape, octaves, persistence, frequency)``: (Z, Y, X) float64,
    noise at the integer points (x, y, z) / frequency summed over octaves of halving frequency and
    ``persistence``-times amplitude. Its points start at 0, so a smaller shape's field is this one's corner."""
    perm, grad_index = permutation(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    noise = np.zeros(shape, dtype=np.float64)
    amplitude = 1.0
    for _ in range(octaves):
        noise += amplitude * noise3(x / frequency, y / frequency, z / frequency, perm, grad_index)
        frequency /= 2
        amplitude *= persistence
    return noise
