import contextlib
import math
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

import pyro_decomp.data.shapes as shapes_module
from pyro_decomp.data import GroundTruthData, Shapes
from pyro_decomp.data.ground_truth import write_packed_atomically
from pyro_decomp.data.shapes import FULL_SIZES, SHAPES_FACTOR_NAMES, render_shapes

STEP = 2 * math.pi / 39  # the orientation grid step, 9.23°


class _FullGrid(GroundTruthData):
    """The shapes factor grid without images: indexing is all the random pairs and the index map need."""

    def __init__(self):
        self._set_factors(SHAPES_FACTOR_NAMES, shapes_module._full_values())


@pytest.fixture(scope="module")
def sprites():
    """The 720 (shape, scale, orientation) sprites at position (0, 0): images (3, 6, 40, 64, 64) float64."""
    ds = Shapes(subsample={"position_x": 32, "position_y": 32}, cache=False, progress=False)
    assert ds.factor_sizes == (3, 6, 40, 1, 1)
    return ds.images(ds.all_factors()).reshape(3, 6, 40, 64, 64).double()


@pytest.fixture(scope="module")
def positions():
    """Images over the 32 × 32 position grid for 3 shapes, 2 scales, 4 orientations: (24, 32, 32, 64, 64)."""
    ds = Shapes(subsample={"scale": 5, "orientation": 10}, cache=False, progress=False)
    assert ds.factor_sizes == (3, 2, 4, 32, 32)
    return ds, ds.images(ds.all_factors(), dtype=torch.uint8).reshape(24, 32, 32, 64, 64)


def test_items_and_subsample_grid():
    ds = Shapes(subsample={"orientation": 10, "position_x": 8, "position_y": 8}, cache=False, progress=False)
    assert ds.factor_sizes == (3, 6, 4, 4, 4) and len(ds) == 1152
    assert torch.allclose(ds.factor_values[2], torch.linspace(0, 2 * math.pi, 40)[::10])
    image, factors = ds[len(ds) - 1]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert factors.dtype == torch.int64 and factors.tolist() == [2, 5, 3, 3, 3]
    assert set(image.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(ds[-1][0], image)
    with pytest.raises(ValueError, match="unknown factor"):
        Shapes(subsample={"colour": 2}, cache=False)
    with pytest.raises(ValueError, match="positive integer"):
        Shapes(subsample={"scale": 0}, cache=False)


def test_store_equals_direct_rendering(positions):
    # the stored images (sprites rendered once, translated by packed-bit gathers) are the implicit shape
    # functions evaluated on each whole image, bit for bit
    ds, images = positions
    f = ds.sample_factors(150, torch.Generator().manual_seed(1))
    assert torch.equal(ds.images(f), ds.render(f))


def test_area_grows_with_scale(sprites):
    area = sprites.sum((-1, -2))  # (3, 6, 40)
    assert (area.diff(dim=1) > 0).all()
    scale = torch.linspace(0.5, 1.0, 6, dtype=torch.float64)
    # at orientation 0 the square's edges lie on pixel borders: exactly (2 · 10 · scale)² pixels
    assert torch.equal(area[0, :, 0], (20 * scale).round() ** 2)
    # every sprite lies inside its 30 × 30 window (here rows and columns 0-29), so translating it never clips
    assert sprites[..., 30:, :].sum() == 0 and sprites[..., :, 30:].sum() == 0
    assert sprites[..., 0, :].sum() == 0 and sprites[..., :, 0].sum() == 0
    assert sprites[..., 29, :].sum() == 0 and sprites[..., :, 29].sum() == 0
    # At any orientation the mask differs from the true shape only in pixels its boundary crosses, by at
    # most one pixel each, and a curve of length L crosses at most √2·L + 4 pixels. Square: area 400 s²,
    # L = 80 s; ellipse with semi-axes 10 s and 5 s: area 50π s², L by Ramanujan's formula.
    a, b = 10 * scale, 5 * scale
    ellipse_perimeter = math.pi * (3 * (a + b) - torch.sqrt((3 * a + b) * (a + 3 * b)))
    for shape, true_area, perimeter in (
        (0, 400 * scale**2, 80 * scale),
        (1, 50 * math.pi * scale**2, ellipse_perimeter),
    ):
        bound = math.sqrt(2) * perimeter + 4
        assert ((area[shape] - true_area[:, None]).abs() <= bound[:, None]).all()


def test_centroid_moves_with_position(positions):
    ds, images = positions
    img = images.double()
    mass = img.sum((-1, -2))
    cols = (img.sum(-2) * torch.arange(64)).sum(-1) / mass  # (24, 32 x, 32 y)
    rows = (img.sum(-1) * torch.arange(64)).sum(-1) / mass
    assert (cols.diff(dim=1) > 0).all() and (rows.diff(dim=2) > 0).all()
    # translation by whole pixels: the centroid moves by exactly the centre's shift, the same for every
    # sprite, and spans 34 pixels (centres from pixel corner 15 to 49)
    shift = torch.from_numpy(shapes_module._centres() - 15).double()
    assert torch.allclose(cols - cols[:, :1], shift[None, :, None].expand_as(cols), atol=1e-9)
    assert torch.allclose(rows - rows[:, :, :1], shift[None, None, :].expand_as(rows), atol=1e-9)
    assert shift[-1] == 34
    # the y position does not move the centroid's column, nor x its row
    assert torch.allclose(cols, cols[:, :, :1].expand_as(cols)) and torch.allclose(
        rows, rows[:, :1].expand_as(rows)
    )
    # every image fits: nothing touches the border rows and columns
    assert images[..., 0, :].sum() == 0 and images[..., -1, :].sum() == 0
    assert images[..., :, 0].sum() == 0 and images[..., :, -1].sum() == 0


def _moments(img):
    """Centroid (x right, y up, about the sprite centre at pixel corner (15, 15)) and central 2nd moments."""
    r, c = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    x, y = c + 0.5 - 15, -(r + 0.5 - 15)
    m = img.sum((-1, -2))
    mx, my = (img * x).sum((-1, -2)) / m, (img * y).sum((-1, -2)) / m
    dx, dy = x - mx[..., None, None], y - my[..., None, None]
    m20 = (img * dx * dx).sum((-1, -2)) / m
    m02 = (img * dy * dy).sum((-1, -2)) / m
    m11 = (img * dx * dy).sum((-1, -2)) / m
    return mx, my, m20, m02, m11


def _wrapped(angle, period):
    return torch.remainder(angle + period / 2, period) - period / 2


def test_orientation_turns_the_principal_axis(sprites):
    # The measured axis must follow the orientation θ (counterclockwise as displayed) to within one grid
    # step (9.23°) and in order, so that the image determines the orientation to the grid's resolution.
    # Pixelisation perturbs the 2nd-moment tensor M by δM ~ (boundary pixels)/area, and turns its axis
    # by about |δM| / (λ1 − λ2): small for the ellipse (anisotropy (λ1 − λ2)/(λ1 + λ2) ≈ 0.6), 10 times
    # larger for the heart, whose inertia is nearly round (anisotropy ≈ 0.06): its axis is tested at the
    # largest scale, and its orientation at every scale but the smallest through its centroid, which lies
    # off the rotation centre on the heart's mirror axis.
    theta = torch.linspace(0, 2 * math.pi, 40, dtype=torch.float64)
    mx, my, m20, m02, m11 = _moments(sprites)
    axis = 0.5 * torch.atan2(2 * m11, m20 - m02)  # (3, 6, 40), defined modulo π
    aniso = torch.sqrt((m20 - m02) ** 2 + 4 * m11**2) / (m20 + m02)
    assert aniso[1].min() > 0.5 and aniso[2].max() < 0.15 and aniso[0].max() < 0.05  # square: isotropic
    for shape, scales in ((1, range(6)), (2, [5])):
        for s in scales:
            err = _wrapped(axis[shape, s] - axis[shape, s, 0] - theta, math.pi)
            assert err.abs().max() < STEP, (shape, s)
            turn = torch.diff(torch.from_numpy(np.unwrap(2 * axis[shape, s].numpy())) / 2)
            assert (turn > 0).all(), (shape, s)
    # the ellipse's major axis is horizontal at θ = 0; the heart's mirror axis is vertical
    assert torch.allclose(axis[1, :, 0], torch.zeros(6, dtype=torch.float64), atol=1e-9)
    assert (
        torch.allclose(mx[2, :, 0], torch.zeros(6, dtype=torch.float64), atol=1e-9)
        and (my[2, :, 0] > 0).all()
    )
    direction = torch.atan2(my[2], mx[2])  # (6, 40)
    err = _wrapped(direction - direction[:, :1] - theta, 2 * math.pi)
    assert err[1:].abs().max() < STEP
    # the square turns its 4-fold harmonic Σ (x + iy)⁴ by 4θ
    x = torch.arange(64.0) + 0.5 - 15
    z = (x[None, :] - 1j * x[:, None]).to(torch.complex128)
    harmonic = torch.angle((sprites[0] * z**4).sum((-1, -2))) / 4
    err = _wrapped(harmonic - harmonic[:, :1] - theta, math.pi / 2)
    assert err.abs().max() < STEP


def _symmetric_distance(shape, i, j):
    """|θ_i − θ_j| modulo the shape's rotational symmetry (square 90°, ellipse 180°, heart 360°)."""
    period = (math.pi / 2, math.pi, 2 * math.pi)[shape]
    return abs(_wrapped(torch.tensor((i - j) * STEP, dtype=torch.float64), period).item())


def test_distinct_factors_give_distinct_images(sprites):
    # Exhaustively over the 720 sprites (translations by whole pixels cannot make two sprites equal or a
    # sprite equal to itself elsewhere): sprites of different shape or scale always differ. Within a shape
    # and scale, two orientations may give one image only when they are within one grid step of each other
    # modulo the shape's symmetry: their boundaries then differ by at most r·9.23° ≤ 2.3 pixels, which the
    # 10- to 20-pixel sprites cannot always resolve (dSprites shares this). 0 and 2π always coincide.
    flat = sprites.reshape(720, -1)
    differing_pixels = flat.sum(-1)[:, None] + flat.sum(-1)[None, :] - 2 * flat @ flat.T  # |a − b|² for 0/1
    same = differing_pixels == 0
    shape, scale, orient = np.unravel_index(np.arange(720), (3, 6, 40))
    i, j = np.nonzero(np.triu(same.numpy(), 1))
    assert (shape[i] == shape[j]).all() and (scale[i] == scale[j]).all()
    for a, b in zip(i, j):
        assert _symmetric_distance(shape[a], orient[a], orient[b]) <= STEP + 1e-9, (
            shape[a],
            scale[a],
            orient[a],
            orient[b],
        )
    for sh in range(3):
        for s in range(6):
            assert same[sh * 240 + s * 40, sh * 240 + s * 40 + 39]  # 0 ≡ 2π
    # the heart has no rotational symmetry: only 0 ≡ 2π coincide
    heart_pairs = [(orient[a], orient[b]) for a, b in zip(i, j) if shape[a] == 2]
    assert set(heart_pairs) == {(0, 39)}

    # random pairs over the full grid, rendered directly, each differing in one random factor
    grid = _FullGrid()
    gen = torch.Generator().manual_seed(2)
    a = grid.sample_factors(120, gen)
    b = a.clone()
    k = torch.randint(5, (120,), generator=gen)
    size = torch.tensor(FULL_SIZES)[k]
    other = (torch.rand(120, generator=gen) * (size - 1)).long()  # uniform over the size − 1 other levels
    b[torch.arange(120), k] = (a[torch.arange(120), k] + 1 + other) % size
    assert ((a != b).sum(-1) == 1).all()
    differ = (render_shapes(a) != render_shapes(b)).flatten(1).any(-1)
    excused = torch.tensor(
        [
            bool(k[n] == 2 and _symmetric_distance(int(a[n, 0]), int(a[n, 2]), int(b[n, 2])) <= STEP + 1e-9)
            for n in range(120)
        ]
    )
    assert (differ | excused).all() and excused.sum() < 12


def _subset():
    return {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8}  # 3·2·2·4·4 = 192 images


def test_small_subset_is_rendered_in_memory(tmp_path):
    ds = Shapes(root=tmp_path, subsample=_subset(), progress=False)
    assert ds.cache_path is None and list(tmp_path.iterdir()) == []


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    calls = []
    render = shapes_module._render_blocks

    def counting(*args):
        calls.append(args)
        return render(*args)

    monkeypatch.setattr(shapes_module, "_render_blocks", counting)
    first = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert len(calls) == 1 and first.cache_path.exists()
    assert first.cache_path.stat().st_size == 192 * 512 + 128  # packed bits + the .npy header
    mtime = first.cache_path.stat().st_mtime_ns
    second = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert len(calls) == 1 and second.cache_path.stat().st_mtime_ns == mtime
    assert isinstance(second._storage.array, np.memmap)
    f = second.all_factors()
    assert torch.equal(second.images(f), first.images(f)) and torch.equal(second.images(f), second.render(f))
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]


def test_interrupted_render_leaves_no_cache(tmp_path, monkeypatch):
    render = shapes_module._render_blocks

    def interrupted(*args):
        blocks = render(*args)
        yield next(blocks)
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes_module, "_render_blocks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shapes_module, "_render_blocks", render)
    ds = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert torch.equal(ds.images(ds.all_factors()), ds.render(ds.all_factors()))


def test_corrupt_cache_is_rebuilt(tmp_path):
    ds = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    expected = ds.images(ds.all_factors())
    with open(ds.cache_path, "r+b") as f:
        f.truncate(1000)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        again = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert torch.equal(again.images(again.all_factors()), expected)


@pytest.fixture
def big_root(tmp_path):
    """A directory for full-grid caches (377 MB each), deleted after the test."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_subset_reads_the_full_cache_when_present(big_root):
    tmp_path = big_root
    # a sparse stand-in for the full-grid cache holding only this subset's images at their full-grid
    # positions: the subset must find them there (index mapping) rather than render
    small = Shapes(subsample=_subset(), cache=False, progress=False)
    full_index = _FullGrid().index_from_factors(small.all_factors() * torch.tensor(small.steps))
    path = tmp_path / f"shapes_v{shapes_module.RENDER_VERSION}_full.npy"
    store = np.zeros((737280, 64, 8), dtype=np.uint8)
    store[full_index.numpy()] = np.packbits(
        small.images(small.all_factors(), dtype=torch.uint8)[:, 0], axis=-1
    )
    tag, _ = shapes_module._cache_source((1, 1, 1, 1, 1))
    write_packed_atomically(path, 737280, np.array_split(store, 16), source=(tag,))
    del store
    ds = Shapes(root=tmp_path, subsample=_subset(), progress=False)
    assert ds.cache_path == path and len(ds) == 192
    assert torch.equal(ds.images(ds.all_factors()), small.images(small.all_factors()))


def test_pickles_small_and_works_with_dataloader_workers(tmp_path):
    ds = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    blob = pickle.dumps(ds)
    assert len(blob) < 20000  # the memory map is not pickled, only its path
    clone = pickle.loads(blob)
    assert clone._storage._array is None and torch.equal(clone[5][0], ds[5][0])
    # spawned workers receive the data set pickled (the default start method outside Linux)
    loader = torch.utils.data.DataLoader(ds, batch_size=50, num_workers=2, multiprocessing_context="spawn")
    images, factors = zip(*loader)
    assert torch.equal(torch.cat(factors), ds.all_factors())
    assert torch.equal(torch.cat(images), ds.images(ds.all_factors()))


def test_unwritable_root_renders_in_memory(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(shapes_module, "load_or_build_packed", refuse)
    with pytest.warns(UserWarning, match="in memory"):
        ds = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert ds.cache_path is None and ds._storage.in_memory
    assert torch.equal(ds.images(ds.all_factors()), ds.render(ds.all_factors()))


def _payload_offset(path):
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _damage(path, how):
    """Flip one bit of, or zero, the image bytes of a packed cache, keeping its size and modification time."""
    stat = path.stat()
    offset = _payload_offset(path)
    data = bytearray(path.read_bytes())
    payload = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if how == "bit flip":
        data[offset + int(np.flatnonzero(payload)[0])] ^= 0x10
    else:
        data[offset:] = bytes(len(data) - offset)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@contextlib.contextmanager
def _no_rendering(monkeypatch):
    """Fail on any warning or any rendering inside the block."""

    def refuse(*args):
        raise AssertionError("rendered although the cache is good")

    with monkeypatch.context() as m, warnings.catch_warnings():
        warnings.simplefilter("error")
        m.setattr(shapes_module, "_render_blocks", refuse)
        yield


@pytest.mark.parametrize("how", ["bit flip", "zeroed images"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, how):
    ds = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    f = ds.all_factors()
    expected = ds.render(f)
    assert torch.equal(ds.images(f), expected)
    _damage(ds.cache_path, how)
    with pytest.warns(RuntimeWarning, match="damaged") as record:
        again = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    assert str(ds.cache_path) in str(record[0].message)
    assert torch.equal(again.images(f), expected)
    # the rebuilt cache verifies and is served as it is
    with _no_rendering(monkeypatch):
        third = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
        assert torch.equal(third.images(f), expected)


def test_cache_of_another_grid_is_not_served(tmp_path, monkeypatch):
    other = {"scale": 3, "orientation": 20, "position_x": 4, "position_y": 16}  # 192 images too
    a = Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
    b = Shapes(root=tmp_path, subsample=other, progress=False, cache=True)
    assert len(a) == len(b) and a.cache_path != b.cache_path
    shutil.copy2(a.cache_path, b.cache_path)
    with pytest.warns(RuntimeWarning, match="another source") as record:
        again = Shapes(root=tmp_path, subsample=other, progress=False, cache=True)
    assert str(b.cache_path) in str(record[0].message)
    assert torch.equal(again.images(again.all_factors()), again.render(again.all_factors()))
    with _no_rendering(monkeypatch):
        Shapes(root=tmp_path, subsample=_subset(), progress=False, cache=True)
        Shapes(root=tmp_path, subsample=other, progress=False, cache=True)


def test_damaged_full_grid_cache_is_rebuilt(big_root, monkeypatch):
    tmp_path = big_root
    full = Shapes(root=tmp_path, progress=False)
    assert full.cache_path == full.full_cache_path and len(full) == 737280
    gen = torch.Generator().manual_seed(3)
    f = full.sample_factors(64, gen)
    expected = full.render(f)
    assert torch.equal(full.images(f), expected)
    index = full.index_from_factors(f)
    # zero the packed bytes of the sampled images only: the header and the size still look right
    offset = _payload_offset(full.cache_path)
    stat = full.cache_path.stat()
    with open(full.cache_path, "r+b") as out:
        for i in index.tolist():
            out.seek(offset + 512 * i)
            out.write(bytes(512))
    os.utime(full.cache_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.warns(RuntimeWarning, match="damaged"):
        sub = Shapes(root=tmp_path, subsample=_subset(), progress=False)
    assert sub.cache_path == full.full_cache_path
    with _no_rendering(monkeypatch):
        again = Shapes(root=tmp_path, progress=False)
        assert torch.equal(again.images(f), expected)
        assert torch.equal(sub.images(sub.all_factors()), sub.render(sub.all_factors()))
