"""Traffic-sign image-folder sources (GTSRB, BelgiumTS, DFG) and the SuperTraffic-10 merge.

Layouts, relative to a data set directory:

* GTSRB (official zips extracted in place)::

      GTSRB/Final_Training/Images/<5-digit class>/GT-<class>.csv + *.ppm
      GTSRB/Final_Test/Images/*.ppm
      GT-final_test.csv   (from GTSRB_Final_Test_GT.zip; also accepted in GTSRB/ or GTSRB/Final_Test/Images/)

* BelgiumTS classification (BelgiumTSC_Training.zip / BelgiumTSC_Testing.zip)::

      BelgiumTSC_Training/Training/<5-digit class>/GT-<class>.csv + *.ppm
      BelgiumTSC_Testing/Testing/<5-digit class>/GT-<class>.csv + *.ppm

* DFG (images + COCO-style annotations)::

      DFG/train.json, DFG/test.json, DFG/JPEGImages/<file_name>

  COCO fields used: ``images[{id, file_name}]``, ``annotations[{image_id, bbox[x, y, w, h],
  category_id}]``, ``categories[{id, name}]``.

The GTSRB/BelgiumTS CSVs are semicolon separated with header
``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``; the ROI corners are inclusive pixel
coordinates, so a crop is ``X2 - X1 + 1`` pixels wide. Every crop is resized to 32x32 RGB with PIL's
bilinear filter.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchcore.io import atomic_write

from ..errors import DataCorruptError
from . import _checksums
from ._names import GTSRB_CLASS_NAMES


SIZE = 32
DECODE_VERSION = "v1"  # bump when crop/resize changes so stale .npz caches are not reused
ST10_MIN_SIZE = 32
SOURCES = ("gtsrb", "dfg", "bts")  # fixed concatenation order for SuperTraffic-10
CLASS_TABLE = Path(__file__).with_name("supertraffic10_classes.csv")


@dataclass(frozen=True)
class Crop:
    """One annotated sign: the image file, its inclusive-exclusive crop box and the source class."""

    image: Path
    box: tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive)
    source_class: str  # GTSRB/BTS: the integer class id as a string; DFG: the category name

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


@dataclass
class Part:
    """The crops of one source's train or test part plus the annotation files that describe them."""

    source: str
    part: str
    base: Path  # the data set directory the relative file names are taken from
    crops: list[Crop]
    annotation_files: list[Path]


# --- locating ---------------------------------------------------------------------------------------

def _gtsrb_test_csv(d: Path) -> Path | None:
    for rel in ("GT-final_test.csv", "GTSRB/GT-final_test.csv", "GTSRB/Final_Test/Images/GT-final_test.csv"):
        if (d / rel).is_file():
            return d / rel
    return None


def required_paths(source: str, part: str) -> list[str]:
    """Relative paths that must exist in a directory for ``source``'s ``part`` ("train"/"test")."""
    if source == "gtsrb":
        return ["GTSRB/Final_Training/Images/"] if part == "train" else ["GTSRB/Final_Test/Images/", "GT-final_test.csv"]
    if source == "bts":
        return ["BelgiumTSC_Training/Training/"] if part == "train" else ["BelgiumTSC_Testing/Testing/"]
    if source == "dfg":
        return [f"DFG/{part}.json", "DFG/JPEGImages/"]
    raise ValueError(source)


def missing_paths(d: Path, source: str, part: str) -> list[str]:
    """The entries of :func:`required_paths` that ``d`` lacks."""
    out = []
    for rel in required_paths(source, part):
        if rel == "GT-final_test.csv":
            if _gtsrb_test_csv(d) is None:
                out.append(rel)
        elif rel.endswith("/"):
            if not (d / rel).is_dir():
                out.append(rel)
        elif not (d / rel).is_file():
            out.append(rel)
    return out


# --- annotation readers -----------------------------------------------------------------------------

def _read_gt_csv(csv_path: Path, image_dir: Path, class_override: str | None = None) -> list[Crop]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataCorruptError(f"{csv_path}: unreadable annotation CSV ({exc})") from None
    crops = []
    for i, row in enumerate(rows, start=2):
        try:
            x1, y1 = int(row["Roi.X1"]), int(row["Roi.Y1"])
            x2, y2 = int(row["Roi.X2"]), int(row["Roi.Y2"])
            w, h = int(row["Width"]), int(row["Height"])
            cls = class_override if class_override is not None else str(int(row["ClassId"]))
            name = row["Filename"].strip()
        except (KeyError, TypeError, ValueError):
            raise DataCorruptError(
                f"{csv_path}: line {i} is not 'Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId'"
            ) from None
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise DataCorruptError(f"{csv_path}: line {i} has an invalid file name {name!r}")
        box = (max(0, x1), max(0, y1), min(w, x2 + 1), min(h, y2 + 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DataCorruptError(f"{csv_path}: line {i} has an empty ROI")
        crops.append(Crop(image_dir / name, box, cls))
    return crops


def _class_folders(d: Path, csv_path_for) -> tuple[list[Crop], list[Path]]:
    crops: list[Crop] = []
    files: list[Path] = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and p.name.isdigit()):
        csv_path = csv_path_for(sub)
        if not csv_path.is_file():
            raise DataCorruptError(f"{sub}: missing {csv_path.name}; re-extract the archive there")
        files.append(csv_path)
        crops.extend(_read_gt_csv(csv_path, sub, class_override=str(int(sub.name))))
    return crops, files


def read_part(base: Path, source: str, part: str) -> Part:
    """Read the annotations (not the pixels) of ``source``'s ``part`` under ``base``."""
    if source == "gtsrb":
        if part == "train":
            crops, files = _class_folders(base / "GTSRB/Final_Training/Images", lambda s: s / f"GT-{s.name}.csv")
        else:
            csv_path = _gtsrb_test_csv(base)
            crops = _read_gt_csv(csv_path, base / "GTSRB/Final_Test/Images")
            files = [csv_path]
    elif source == "bts":
        d = base / ("BelgiumTSC_Training/Training" if part == "train" else "BelgiumTSC_Testing/Testing")
        crops, files = _class_folders(d, lambda s: s / f"GT-{s.name}.csv")
    elif source == "dfg":
        crops, files = _read_coco(base / f"DFG/{part}.json", base / "DFG/JPEGImages"), [base / f"DFG/{part}.json"]
    else:  # pragma: no cover
        raise ValueError(source)
    return Part(source, part, base, crops, files)


def _read_coco(json_path: Path, image_dir: Path) -> list[Crop]:
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        anns = doc["annotations"]
        crops = []
        for a in anns:
            x, y, w, h = (int(round(float(v))) for v in a["bbox"])
            name = images[int(a["image_id"])]
            if name.startswith(("/", ".")) or ".." in Path(name).parts or w <= 0 or h <= 0:
                raise ValueError(f"bad annotation {a!r}")
            crops.append(Crop(image_dir / name, (x, y, x + w, y + h), cats[int(a["category_id"])]))
    except DataCorruptError:
        raise
    except Exception as exc:
        raise DataCorruptError(
            f"{json_path}: not a COCO annotation file with images/annotations/categories ({type(exc).__name__}: {exc})"
        ) from None
    return crops


# --- pixels -----------------------------------------------------------------------------------------

def part_checksum(part: Part, crops: list[Crop] | None = None) -> str:
    """sha256 over the annotation files and the image files of ``crops`` (default: all of the part)."""
    crops = part.crops if crops is None else crops
    paths = {*part.annotation_files, *(c.image for c in crops)}
    entries = []
    for p in paths:
        try:
            entries.append((os.path.relpath(p, part.base), _checksums.file_digest(p)))
        except OSError:
            raise DataCorruptError(f"{p}: listed in the annotations but cannot be read; restore it") from None
    return _checksums.combine(entries)


def decode(crops: list[Crop]) -> np.ndarray:
    """Crop and resize every sign to 3x32x32 uint8 (N, 3, 32, 32); each image file is opened once."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(crops), 3, SIZE, SIZE), dtype=np.uint8)
    by_image: dict[Path, list[int]] = {}
    for i, c in enumerate(crops):
        by_image.setdefault(c.image, []).append(i)
    for path, idxs in by_image.items():
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                for i in idxs:
                    box = crops[i].box
                    if box[2] > im.width or box[3] > im.height:
                        raise DataCorruptError(f"{path}: crop box {box} lies outside the {im.width}x{im.height} image")
                    patch = im.crop(box).resize((SIZE, SIZE), Image.BILINEAR)
                    out[i] = np.asarray(patch, dtype=np.uint8).transpose(2, 0, 1)
        except DataCorruptError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise DataCorruptError(f"{path}: unreadable image ({type(exc).__name__}: {exc}); restore it") from None
    return out


def decode_cached(crops: list[Crop], key: str, cache_dir: Path | None) -> np.ndarray:
    """:func:`decode` with an optional ``.npz`` cache in ``cache_dir`` keyed by a source checksum."""
    if cache_dir is None or not crops:
        return decode(crops)
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                x = z["x"]
            if x.shape == (len(crops), 3, SIZE, SIZE) and x.dtype == np.uint8:
                return x
        except Exception:  # a damaged cache entry is simply rebuilt
            pass
    x = decode(crops)
    try:
        atomic_write(path, lambda tmp: np.savez(tmp, x=x))
    except OSError:
        pass
    return x


# --- SuperTraffic-10 class table --------------------------------------------------------------------

def load_class_table(path: Path = CLASS_TABLE) -> dict[tuple[str, str], str]:
    """``(source, source_class) -> unified class``: GTSRB from its 43 names, BTS/DFG from the CSV."""
    table = {("gtsrb", str(i)): name for i, name in enumerate(GTSRB_CLASS_NAMES)}
    with open(path, newline="", encoding="utf-8") as f:
        lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    for row in csv.DictReader(lines):
        src, cls, uni = row["source"].strip(), row["source_class"].strip(), row["unified_class"].strip()
        if src in ("gtsrb", "bts"):
            cls = str(int(cls))
        table[(src, cls)] = uni
    return table


def select_classes(train_parts: list[Part], table: dict[tuple[str, str], str], k: int = 10) -> tuple[str, ...]:
    """The ``k`` unified classes with the most kept train crops (ties by name), returned sorted by name."""
    counts: dict[str, int] = {}
    for part in train_parts:
        for c in part.crops:
            uni = table.get((part.source, c.source_class))
            if uni is not None and c.width >= ST10_MIN_SIZE and c.height >= ST10_MIN_SIZE:
                counts[uni] = counts.get(uni, 0) + 1
    ranked = sorted(counts, key=lambda n: (-counts[n], n))[:k]
    return tuple(sorted(ranked))
