"""The batch job's HLL canonicalisation (the Arrow UDF body in
``lamina.batch.tiles``) memoises small images; the memo must change no
output: each image comes out as ``ApproxDistinct.from_storage`` makes it,
whether it was seen before, is too large to memoise, is null, or arrives
after the memo was cleared."""

from __future__ import annotations

import datasketches
import pyarrow as pa
import pytest

from lamina.batch import tiles
from lamina.schemas.aggregations import APPROX_DISTINCT, HLL_LG_K


def _spark_style_image(values: list[str]) -> bytes:
    """An updatable HLL_8 image built by updates, as hll_sketch_agg builds one."""
    sketch = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_8)
    for value in values:
        sketch.update(value)
    return bytes(sketch.serialize_updatable())


def test_memoised_canonical_images_equal_from_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiles, "_CANONICAL_MEMO", {})
    monkeypatch.setattr(tiles, "_MEMO_ENTRIES", 3)  # forces clears below
    images: list[bytes | None] = [
        _spark_style_image([f"m{i % 5}", f"m{(i * 7) % 11}"]) for i in range(40)
    ]
    images += [None, b"", _spark_style_image([f"v{i}" for i in range(2000)])]  # dense: large
    images += images[:10]  # seen again
    got = tiles._canonical_images(pa.array(images, type=pa.binary())).to_pylist()
    assert got == [APPROX_DISTINCT.from_storage(image) for image in images]
    assert len(tiles._CANONICAL_MEMO) <= 3
    assert all(len(key) <= tiles._MEMO_IMAGE_BYTES for key in tiles._CANONICAL_MEMO)
