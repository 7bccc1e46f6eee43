"""training.offline_bundle: parcels that fit a size limit, checked and joined on the other side."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.offline_bundle import pack, unpack


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel" * 10)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "cases.jsonl").write_text('{"id": 1}\n')
    (data / "sub" / "README").write_text("readme\n")
    return wheels, data


def _pack(inputs: tuple[Path, Path], tmp_path: Path) -> list[Path]:
    # pluggy and iniconfig come with pytest wherever the tests run; they stand in for the model packages.
    return pack(inputs[0], inputs[1], tmp_path / "out" / ".xfer", parcel_mb=0.01, first_mb=0.01, distributions=("pluggy", "iniconfig"))


def test_pack_fills_parcels_and_unpack_restores_packages_data_and_wheels(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    parcels = _pack(inputs, tmp_path)
    assert [p.name for p in parcels] == [f".xfer{i}" for i in range(1, len(parcels) + 1)] and len(parcels) >= 2
    for p in parcels:
        assert sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name != "SHA256SUMS") <= 10_000
    dest = tmp_path / "dest"
    unpack(list(reversed(parcels)), dest)  # order of the arguments does not matter
    import pluggy

    here = Path(pluggy.__file__).parent
    assert (dest / "site" / "pluggy" / "_hooks.py").read_bytes() == (here / "_hooks.py").read_bytes()
    assert list((dest / "site").glob("pluggy-*.dist-info/METADATA")) and (dest / "site" / "iniconfig").is_dir()
    assert (dest / "data" / "sub" / "README").read_text() == "readme\n"
    assert (dest / "wheels" / "demo-1.0-py3-none-any.whl").read_bytes() == b"not really a wheel" * 10


def test_unpack_refuses_a_missing_or_damaged_parcel(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    parcels = _pack(inputs, tmp_path)
    with pytest.raises(SystemExit, match="missing"):
        unpack(parcels[:-1], tmp_path / "d1")
    with pytest.raises(SystemExit, match="no SHA256SUMS"):
        unpack(parcels[1:], tmp_path / "d2")
    piece = next(parcels[-1].glob("models.tar.xz.*"))
    blob = bytearray(piece.read_bytes())
    blob[-1] ^= 0xFF
    piece.write_bytes(bytes(blob))
    with pytest.raises(SystemExit, match="damaged"):
        unpack(parcels, tmp_path / "d3")
