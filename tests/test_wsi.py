"""Whole-slide images: pyramids written with tifffile, tissue tiles at a magnification, pooling."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from _fuzz import case_limits
from m3bind.data.transforms import build_transform, default_preprocess
from m3bind.data.wsi import WholeSlide, embed_slide, pool_tile_embeddings, tissue_fraction
from m3bind.errors import DataError
from m3bind.models.builtin import build_builtin_model

PINK = (200, 110, 160)  # eosin-like stain, saturation (200-110)/200 = 0.45


def slide_pixels(height: int, width: int, tissue: list[tuple[int, int, int, int]],
                 seed: int = 0) -> np.ndarray:
    """Off-white glass with a little noise, and pink tissue in each (top, left, bottom, right)."""
    rng = np.random.default_rng(seed)
    pixels = (240 + rng.integers(-4, 5, size=(height, width, 1))).repeat(3, axis=2)
    for top, left, bottom, right in tissue:
        noise = rng.integers(-10, 11, size=(bottom - top, right - left, 3))
        pixels[top:bottom, left:right] = np.array(PINK) + noise
    return pixels.astype(np.uint8)


def write_pyramid(path: Path, base: np.ndarray, downsamples=(1, 4), *, mpp: float | None = 0.25,
                  tile: int = 64, compression: str | None = None) -> Path:
    """A tiled pyramid in SubIFDs (the OME / vips layout), resolution tags in centimetres."""
    with tifffile.TiffWriter(path) as tif:
        for i, factor in enumerate(downsamples):
            level = base[::factor, ::factor]
            options = {}
            if mpp is not None:
                options.update(resolution=(1e4 / (mpp * factor),) * 2, resolutionunit="CENTIMETER")
            if i == 0:
                options["subifds"] = len(downsamples) - 1
            else:
                options["subfiletype"] = 1
            tif.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                      **options)
    return path


def write_svs(path: Path, base: np.ndarray, app_mag: float = 20.0, mpp: float = 0.5) -> Path:
    """The Aperio layout: base, stripped thumbnail, further levels, all with a description."""
    description = (f"Aperio Image Library v12.0.15\n{base.shape[1]}x{base.shape[0]} (64x64) "
                   f"|AppMag = {app_mag:g}|MPP = {mpp}")
    with tifffile.TiffWriter(path) as tif:  # metadata=None: no tifffile "shaped" description
        tif.write(base, tile=(64, 64), photometric="rgb", description=description, metadata=None)
        tif.write(base[::8, ::8], photometric="rgb", description="Aperio thumbnail", metadata=None)
        for factor in (2, 4):
            tif.write(base[::factor, ::factor], tile=(64, 64), photometric="rgb",
                      description=description, metadata=None)
    return path


@pytest.fixture
def slide_40x(tmp_path):
    """1024 x 1536 at 40x (0.25 um/px), levels 1 and 4; tissue on a known 10x tile block."""
    # At 10x (level 1, 256 x 384) with 64-pixel tiles the grid is 4 x 6; the tissue covers
    # tile rows 1-2 and columns 2-4 (six tiles), plus a sliver covering 25% of tile (0, 0).
    base = slide_pixels(1024, 1536, [(256, 512, 768, 1280), (0, 0, 64, 256)])
    return write_pyramid(tmp_path / "slide.tif", base), base


# --------------------------------------------------------------------------- levels and scale

def test_levels_and_scale_from_resolution_tags(slide_40x):
    path, _ = slide_40x
    with WholeSlide(path) as slide:
        assert [(lv.height, lv.width, lv.downsample) for lv in slide.levels] == \
            [(1024, 1536, 1.0), (256, 384, 4.0)]
        assert slide.base_mpp == pytest.approx(0.25)
        assert slide.base_magnification == pytest.approx(40.0)
        assert slide.level_for(10.0) == (slide.levels[1], 1.0)
        level, factor = slide.level_for(20.0)
        assert level.index == 0 and factor == pytest.approx(2.0)
        level, factor = slide.level_for(5.0)
        assert level.index == 1 and factor == pytest.approx(2.0)
        with pytest.raises(DataError, match="80x is not available; the slide's base is 40x"):
            slide.level_for(80.0)


def test_aperio_description_gives_magnification(tmp_path):
    path = write_svs(tmp_path / "slide.svs", slide_pixels(512, 768, []))
    with WholeSlide(path) as slide:
        assert slide.base_magnification == 20.0 and slide.base_mpp == 0.5
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0, 4.0]  # thumbnail excluded
        assert slide.level_for(5.0) == (slide.levels[2], 1.0)


def test_slide_without_scale_needs_a_base_magnification(tmp_path):
    path = write_pyramid(tmp_path / "noscale.tif", slide_pixels(256, 256, []), mpp=None)
    with WholeSlide(path) as slide:
        assert slide.base_magnification is None
        with pytest.raises(DataError, match="pass base_magnification or base_mpp") as info:
            slide.level_for(10.0)
        assert "noscale.tif" in str(info.value)
    with WholeSlide(path, base_mpp=0.5) as slide:
        assert slide.base_magnification == pytest.approx(20.0)
    # A default 72 DPI is a document setting, not a microscope's pixel size.
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, slide_pixels(128, 128, []), tile=(64, 64), photometric="rgb",
                     resolution=(72, 72), resolutionunit="INCH")
    with WholeSlide(dpi) as slide:
        assert slide.base_mpp is None


# --------------------------------------------------------------------------- pixels

@pytest.mark.parametrize("layout", ["tiled", "strips", "zlib"])
def test_read_region_matches_the_written_pixels_across_segment_borders(tmp_path, layout):
    base = np.random.default_rng(1).integers(0, 256, size=(300, 430, 3), dtype=np.uint8)
    path = tmp_path / f"{layout}.tif"
    if layout == "strips":
        tifffile.imwrite(path, base, photometric="rgb", rowsperstrip=7)
    else:
        write_pyramid(path, base, downsamples=(1,), tile=64,
                      compression="zlib" if layout == "zlib" else None)
    with WholeSlide(path, base_magnification=20) as slide:
        level = slide.levels[0]
        for x, y, w, h in [(0, 0, 430, 300), (63, 61, 5, 9), (100, 37, 200, 150), (429, 299, 1, 1)]:
            np.testing.assert_array_equal(slide.read_region(level, x, y, w, h),
                                          base[y:y + h, x:x + w])
        with pytest.raises(ValueError, match="outside level"):
            slide.read_region(level, 400, 0, 31, 10)


def test_gray_and_rgba_levels_come_back_as_rgb(tmp_path):
    gray = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    tifffile.imwrite(tmp_path / "gray.tif", gray, tile=(32, 32))
    rgba = np.dstack([gray, gray // 2, gray // 3, np.full_like(gray, 7)])
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, tile=(32, 32), photometric="rgb",
                     extrasamples=["unassalpha"])
    with WholeSlide(tmp_path / "gray.tif", base_magnification=20) as slide:
        region = slide.read_region(slide.levels[0], 0, 0, 64, 64)
        assert region.shape == (64, 64, 3) and (region == gray[:, :, None]).all()
    with WholeSlide(tmp_path / "rgba.tif", base_magnification=20) as slide:
        np.testing.assert_array_equal(slide.read_region(slide.levels[0], 0, 0, 64, 64),
                                      rgba[:, :, :3])


# --------------------------------------------------------------------------- tissue tiles

def test_tissue_fraction_of_glass_tissue_and_black():
    glass = np.full((8, 8, 3), 242, np.uint8)
    tissue = np.broadcast_to(np.array(PINK, np.uint8), (8, 8, 3))
    black_noise = np.zeros((8, 8, 3), np.uint8)
    black_noise[..., 0] = 12  # saturated in HSV terms, but black
    assert tissue_fraction(glass) == 0.0
    assert tissue_fraction(tissue) == 1.0
    assert tissue_fraction(black_noise) == 0.0
    half = glass.copy()
    half[:4] = PINK
    assert tissue_fraction(half) == 0.5


def test_tiles_at_10x_keep_exactly_the_tissue_block(slide_40x):
    path, _ = slide_40x
    with WholeSlide(path) as slide:
        tiles = list(slide.tiles(magnification=10.0, tile_size=64, tissue_threshold=0.5))
        # level 1 (downsample 4): tissue rows 64..192, columns 128..320 -> tiles (1..2, 2..4)
        assert [(t.x, t.y) for t in tiles] == [(x * 256, y * 256) for y in (1, 2) for x in (2, 3, 4)]
        assert all(t.pixels.shape == (64, 64, 3) and t.pixels.dtype == np.uint8 for t in tiles)
        assert all(t.tissue_fraction == 1.0 for t in tiles)
        # a lower threshold also keeps the tile a quarter covered by the sliver
        loose = list(slide.tiles(magnification=10.0, tile_size=64, tissue_threshold=0.2))
        assert len(loose) == 7 and (loose[0].x, loose[0].y) == (0, 0)
        assert loose[0].tissue_fraction == pytest.approx(0.25)


def test_tiles_at_20x_are_read_from_the_base_and_resized(slide_40x):
    path, base = slide_40x
    with WholeSlide(path) as slide:
        tiles = list(slide.tiles(magnification=20.0, tile_size=64, tissue_threshold=0.75))
    # 20x from the 40x base: 128-pixel base regions resized to 64; grid 8 x 12 of which the
    # tissue block (base rows 256..768, columns 512..1280) holds 4 x 6 tiles (the sliver
    # covers half of two tiles, below the threshold)
    assert len(tiles) == 24
    assert {(t.x, t.y) for t in tiles} == {(x, y) for y in range(256, 768, 128)
                                           for x in range(512, 1280, 128)}
    first = tiles[0]
    expected = base[first.y:first.y + 128, first.x:first.x + 128].reshape(64, 2, 64, 2, 3)
    np.testing.assert_allclose(first.pixels, expected.mean(axis=(1, 3)), atol=1)


def test_tiles_are_streamed_with_bounded_memory(tmp_path):
    # a 2048 x 2048 base (12 MiB decoded); reading all its tiles must not hold the level
    base = slide_pixels(2048, 2048, [(0, 0, 2048, 2048)])
    path = write_pyramid(tmp_path / "big.tif", base, downsamples=(1,), tile=256)
    with WholeSlide(path, cache_bytes=2 * 2 ** 20) as slide:
        tracemalloc.start()
        try:
            count = sum(1 for _ in slide.tiles(magnification=40.0, tile_size=224))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == (2048 // 224) ** 2
    assert peak < 4 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB while streaming a 12 MiB level"


# --------------------------------------------------------------------------- embedding

def test_embed_slide_batches_tiles_and_pools_to_one_unit_vector(slide_40x):
    path, _ = slide_40x
    model = build_builtin_model("pathology", ["Benign colonic mucosa.", "Adenocarcinoma."]).eval()
    transform = build_transform("pathology", default_preprocess("pathology", demo=True))
    with WholeSlide(path) as slide:
        result = embed_slide(slide, transform, model.encode_image, magnification=10.0,
                             tile_size=64, batch_size=4)
    assert result.embeddings.shape == (6, model.native_dim)
    assert result.positions == [(x * 256, y * 256) for y in (1, 2) for x in (2, 3, 4)]
    assert torch.allclose(result.embeddings.norm(dim=1), torch.ones(6), atol=1e-5)
    pooled = pool_tile_embeddings(result.embeddings)
    assert pooled.shape == (model.native_dim,) and pooled.norm().item() == pytest.approx(1.0)


def test_embed_slide_without_tissue_is_a_data_error(tmp_path):
    path = write_pyramid(tmp_path / "empty.tif", slide_pixels(256, 256, []))
    with WholeSlide(path) as slide, pytest.raises(DataError, match="no tile at 40x") as info:
        embed_slide(slide, lambda s: torch.zeros(3), lambda b: b, magnification=40.0, tile_size=64)
    assert "empty.tif" in str(info.value)


def test_pool_mean_and_top_k():
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]), dim=1)
    mean = pool_tile_embeddings(emb)
    torch.testing.assert_close(mean, F.normalize(emb.mean(dim=0), dim=0))
    scores = torch.tensor([0.1, 0.9, 0.8, 0.0])
    top = pool_tile_embeddings(emb, how="top", k=2, scores=scores)
    torch.testing.assert_close(top, F.normalize(emb[[1, 2]].mean(dim=0), dim=0))
    # k above the tile count takes every tile
    torch.testing.assert_close(pool_tile_embeddings(emb, how="top", k=10, scores=scores), mean)
    with pytest.raises(ValueError, match="one score per tile"):
        pool_tile_embeddings(emb, how="top")
    with pytest.raises(ValueError, match="n_tiles >= 1"):
        pool_tile_embeddings(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_tile_embeddings(emb, how="max")


# --------------------------------------------------------------------------- bad slides

def test_unreadable_and_unsupported_slides_are_data_errors(tmp_path):
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(DataError, match="garbage.svs"):
        WholeSlide(garbage)
    sixteen = tmp_path / "sixteen.tif"
    tifffile.imwrite(sixteen, np.zeros((64, 64), np.uint16), tile=(32, 32))
    with pytest.raises(DataError, match="8-bit gray, RGB or RGBA expected"):
        WholeSlide(sixteen)
    one_strip = tmp_path / "one_strip.tif"
    tifffile.imwrite(one_strip, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with WholeSlide(one_strip, base_magnification=20) as slide:  # small: one strip is fine
        assert slide.read_region(slide.levels[0], 0, 0, 64, 64).shape == (64, 64, 3)


def test_a_corrupt_tile_byte_count_does_not_allocate_it(tmp_path):
    base = slide_pixels(512, 256, [(0, 0, 512, 256)])
    path = write_pyramid(tmp_path / "corrupt.tif", base, downsamples=(1,), tile=256)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        assert tag.dtype == 4  # LONG: 256 x 256 x 3 bytes per tile do not fit a SHORT
        at = tag.valueoffset
    data = bytearray(path.read_bytes())
    data[at:at + 4] = (0xFFFFFF00).to_bytes(4, "little")  # the first tile claims 4 GiB
    path.write_bytes(bytes(data))
    with case_limits(), WholeSlide(path, base_magnification=20) as slide:
        region = slide.read_region(slide.levels[0], 0, 0, 64, 64)
    # the tile's own bytes are all there, so it still decodes to the written pixels
    np.testing.assert_array_equal(region, base[:64, :64])


def test_a_whole_slide_is_one_study_of_a_bound_model(slide_40x):
    from m3bind.config import StudentConfig
    from m3bind.models.bound import M3Bind
    from m3bind.models.heads import BindingHead
    from m3bind.models.student import build_student

    path, _ = slide_40x
    texts = ["Benign colonic mucosa.", "Adenocarcinoma of the colon."]
    model = build_builtin_model("pathology", texts, preprocess=default_preprocess("pathology", demo=True))
    head = BindingHead(model.native_dim, 32, torch.Generator().manual_seed(0))
    bound = M3Bind({"pathology": model}, {"pathology": head}, build_student(StudentConfig(), texts, 32, seed=0))
    slide_embedding = bound.encode_slide(path, magnification=10.0, tile_size=64)
    with WholeSlide(path) as slide, torch.no_grad():
        tiles = embed_slide(slide, model.transform(), lambda batch: head(model.encode_image(batch)),
                            magnification=10.0, tile_size=64)
    assert slide_embedding.shape == (32,)
    assert torch.allclose(slide_embedding, pool_tile_embeddings(tiles.embeddings), atol=1e-6)
    # top-k by a text query keeps the tiles closest to it
    query = bound.encode_texts("Adenocarcinoma of the colon.")[0]
    top = bound.encode_slide(path, magnification=10.0, tile_size=64, pool="top", top_k=2, query="Adenocarcinoma of the colon.")
    expected = pool_tile_embeddings(tiles.embeddings, "top", 2, scores=tiles.embeddings @ query)
    assert torch.allclose(top, expected, atol=1e-6)


def test_a_slide_in_a_manifest_is_indexed_as_one_study(slide_40x, tmp_path):
    import pandas as pd

    from m3bind.config import StudentConfig
    from m3bind.data.manifest import write_manifest
    from m3bind.data.wsi import is_whole_slide
    from m3bind.models.bound import M3Bind
    from m3bind.models.heads import BindingHead
    from m3bind.models.student import build_student
    from m3bind.search.building import build_index
    from m3bind.search.index import SearchIndex
    from m3bind.search.model_identity import SearchModel

    path, base = slide_40x
    tile = tmp_path / "tile.png"
    from PIL import Image
    Image.fromarray(base[256:512, 512:768]).save(tile)
    assert is_whole_slide(path) and not is_whole_slide(tile)
    texts = ["Benign colonic mucosa.", "Adenocarcinoma of the colon."]
    model = build_builtin_model("pathology", texts, preprocess=default_preprocess("pathology", demo=True))
    bound = M3Bind({"pathology": model}, {"pathology": BindingHead(model.native_dim, 32, torch.Generator().manual_seed(0))},
                   build_student(StudentConfig(), texts, 32, seed=0))
    bound.save_pretrained(tmp_path / "model")
    manifest = write_manifest(pd.DataFrame([
        {"path": str(path), "text": "slide", "labels": "", "modality": "pathology", "patient_id": "P1"},
        {"path": str(tile), "text": "tile", "labels": "", "modality": "pathology", "patient_id": "P2"}]),
        tmp_path / "manifest.csv")
    loaded = M3Bind.from_pretrained(tmp_path / "model")
    report = build_index(SearchModel.load(tmp_path / "model"), [manifest], tmp_path / "index", workers=0)
    assert report.embedded == 2
    index = SearchIndex.open(tmp_path / "index")
    query = loaded.encode_slide(path, magnification=20.0).numpy()
    hits = index.search(query, 2)
    assert hits[0].study.path == str(path) and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_a_slide_has_a_preview_thumbnail(slide_40x):
    import io as _io

    from PIL import Image

    from m3bind.search.thumbnails import render_thumbnail

    path, _ = slide_40x
    image = Image.open(_io.BytesIO(render_thumbnail(path)))
    assert image.mode == "RGB" and max(image.size) > 0
    # the overview keeps the slide's aspect (1536 x 1024)
    assert image.size[0] > image.size[1]
