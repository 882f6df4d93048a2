"""Detection and segmentation data from the formats annotation tools write.

* COCO JSON (:func:`read_coco`): ``images``, ``annotations`` (``bbox`` as x, y, width, height;
  ``segmentation`` as polygons or RLE, decoded with pycocotools) and ``categories``; image files
  relative to the JSON file's folder (or ``images_dir``). Detection by default, ``task="segmentation"``
  paints each annotation's mask with its category (a semantic mask, 0 = background),
  ``task="instance-segmentation"`` keeps each annotation's box, category and mask.
* Pascal VOC (:func:`read_voc`): ``Annotations/*.xml`` (``<object><name>``, ``<bndbox>``) with
  ``JPEGImages/``; classes are the names found, sorted.
* YOLO (:func:`read_yolo`): ``images/`` and ``labels/`` (one ``class cx cy w h`` line per object,
  fractions of the image) with the class names in ``classes.txt`` or ``data.yaml`` (``names``).
* Mask folders (:func:`read_mask_folder`): ``images/`` with ``masks/`` (or VOC's ``JPEGImages/``
  with ``SegmentationClass/``): one PNG per image, pixel value = class index (palette PNGs read as
  indices), 255 = no class; the class names in ``classes.txt`` (one a line), else ``class_0 ...``.

Bad input is refused before anything is trained, with one :class:`~transferkit.errors.DataError` that
names the file, the annotation (or line) and the value: a box outside its image, a box of zero area, a
class not among the categories, an annotation for an image that is not listed, a polygon of fewer than
3 points, a mask whose size is not its image's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from transferkit.data.adapters_images import IMAGE_EXTENSIONS
from transferkit.data.dataset import TaskData, printable
from transferkit.errors import DataError
from transferkit.tasks.detection import box_target, check_boxes, image_size
from transferkit.tasks.instance_segmentation import instance_target
from transferkit.tasks.segmentation import IGNORE_PIXEL, check_mask

DENSE_TASKS = ("detection", "segmentation", "instance-segmentation")


def _objects(rows: list) -> np.ndarray:
    arr = np.empty(len(rows), dtype=object)
    arr[:] = rows
    return arr


def _size_of(path: Path, where: str) -> tuple[int, int]:
    if not path.is_file():
        raise DataError(f"{where}: image file not found: {printable(str(path))}")
    return image_size(str(path))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _check_task(task: str | None, path: Path) -> str:
    task = task or "detection"
    if task not in DENSE_TASKS:
        raise DataError(f"{path} holds boxes and masks, which are {', '.join(DENSE_TASKS)} data; task {task!r} "
                        f"cannot read them.")
    return task


# ---------------------------------------------------------------- COCO


def is_coco(path: Path) -> bool:
    """A ``.json`` file whose top level is an object with ``images``, ``annotations`` and ``categories``."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and {"images", "annotations", "categories"} <= set(doc)


def _coco_mask(ann: dict, h: int, w: int, where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            raise DataError(f"{where}: empty 'segmentation' (a list of polygons is expected).")
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) / 2 if isinstance(poly, list) else 0
                raise DataError(f"{where}: polygon {k + 1} has {n:g} points; a polygon needs at least 3 (x, y) "
                                f"points.")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise DataError(f"{where}: the RLE mask is {seg['size'][1]}x{seg['size'][0]} but its image is {w}x{h}.")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    else:
        raise DataError(f"{where}: no 'segmentation' (polygons or RLE) for a segmentation task.")
    return mask_utils.decode(rle).astype(bool)


def read_coco(path: str | os.PathLike, *, task: str | None = None, images_dir: str | os.PathLike | None = None) -> TaskData:
    """A COCO JSON file as detection (boxes) or segmentation (masks) data; see the module docstring."""
    path = Path(path)
    task = _check_task(task, path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read COCO file {path}: {exc}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: a COCO file needs a list '{key}'.")
    cats = sorted(doc["categories"], key=lambda c: c.get("id", 0))
    index = {c.get("id"): k for k, c in enumerate(cats)}
    names = [str(c.get("name", c.get("id"))) for c in cats]
    root = Path(images_dir) if images_dir is not None else path.parent
    images = {}
    for im in doc["images"]:
        if "id" not in im or "file_name" not in im:
            raise DataError(f"{path}: image entry {im!r:.80} needs 'id' and 'file_name'.")
        images[im["id"]] = im
    per_image: dict = {i: [] for i in images}
    for a, ann in enumerate(doc["annotations"]):
        aid = ann.get("id", a + 1)
        if ann.get("image_id") not in images:
            raise DataError(f"{path}: annotation {aid} is for image_id {ann.get('image_id')!r}, which is not among "
                            f"the file's {len(images)} images.")
        if ann.get("category_id") not in index:
            valid = ", ".join(f"{c.get('id')} ({n})" for c, n in zip(cats, names))
            raise DataError(f"{path}: annotation {aid} has category_id {ann.get('category_id')!r}; the categories "
                            f"are {valid}.")
        per_image[ann["image_id"]].append((aid, ann))
    items, targets = [], []
    for iid, im in images.items():
        file = root / im["file_name"]
        where = f"{path}, image {iid} ('{im['file_name']}')"
        h, w = _size_of(file, where)
        if (im.get("height"), im.get("width")) not in ((None, None), (h, w)):
            raise DataError(f"{where}: the file says {im.get('width')}x{im.get('height')} but the image is {w}x{h}.")
        items.append(str(file))
        if task != "segmentation":
            boxes, labels, masks = [], [], []
            for aid, ann in per_image[iid]:
                bbox = ann.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise DataError(f"{path}: annotation {aid} has bbox {bbox!r}; COCO boxes are [x, y, width, height].")
                x, y, bw, bh = (float(v) for v in bbox)
                box, label = [x, y, x + bw, y + bh], index[ann["category_id"]]
                check_boxes(np.array([box]), np.array([label]), (h, w), len(names),
                            f"{path}, annotation {aid} (image '{im['file_name']}')")
                boxes.append(box)
                labels.append(label)
                if task == "instance-segmentation":
                    masks.append(_coco_mask(ann, h, w, f"{path}, annotation {aid} (image '{im['file_name']}')"))
            targets.append(box_target(boxes, labels, (h, w)) if task == "detection" else
                           instance_target(np.array(masks, dtype=np.uint8).reshape(-1, h, w), labels, (h, w), boxes))
        else:
            mask = np.zeros((h, w), dtype=np.uint8)
            for aid, ann in per_image[iid]:
                drawn = _coco_mask(ann, h, w, f"{path}, annotation {aid} (image '{im['file_name']}')")
                mask[drawn] = index[ann["category_id"]] + 1
            targets.append(mask)
    if not items:
        raise DataError(f"{path}: no images listed.")
    label_names = ["background", *names] if task == "segmentation" else names
    return TaskData(items, _objects(targets), "image", task=task, label_names=label_names, name=path.stem,
                    source=str(path))


# ---------------------------------------------------------------- Pascal VOC


def is_voc(path: Path) -> bool:
    return path.is_dir() and (path / "Annotations").is_dir()


def read_voc(folder: str | os.PathLike, *, label_names: list[str] | None = None) -> TaskData:
    """A Pascal VOC folder (``Annotations/*.xml``, ``JPEGImages/``) as detection data."""
    import xml.etree.ElementTree as ET

    folder = Path(folder)
    files = sorted((folder / "Annotations").glob("*.xml"))
    if not files:
        raise DataError(f"{folder / 'Annotations'}: no .xml annotation files.")
    parsed = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as exc:
            raise DataError(f"Cannot read VOC annotation {f}: {exc}") from None
        objects = []
        for k, obj in enumerate(root.findall("object")):
            name, box = obj.findtext("name"), obj.find("bndbox")
            try:
                coords = [float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise DataError(f"{f}: object {k + 1} ({name!r}) needs a <bndbox> with numeric xmin, ymin, xmax, "
                                f"ymax.") from None
            objects.append((str(name).strip(), coords))
        parsed.append((f, root.findtext("filename") or f.with_suffix(".jpg").name, objects))
    names = list(label_names) if label_names else sorted({n for _, _, objs in parsed for n, _ in objs})
    items, targets = [], []
    for f, filename, objects in parsed:
        image = folder / "JPEGImages" / filename
        h, w = _size_of(image, str(f))
        for k, (name, _) in enumerate(objects):
            if name not in names:
                raise DataError(f"{f}: object {k + 1} has class {name!r}, not among {', '.join(names)}.")
        boxes = np.array([c for _, c in objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([names.index(n) for n, _ in objects], dtype=np.int64)
        check_boxes(boxes, labels, (h, w), len(names), str(f), what="object")
        items.append(str(image))
        targets.append(box_target(boxes, labels, (h, w)))
    return TaskData(items, _objects(targets), "image", task="detection", label_names=names, name=folder.name,
                    source=str(folder))


# ---------------------------------------------------------------- YOLO


def is_yolo(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir()


def _yolo_names(folder: Path) -> list[str]:
    txt, yml = folder / "classes.txt", folder / "data.yaml"
    if txt.is_file():
        return [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    if yml.is_file():
        import yaml

        names = (yaml.safe_load(yml.read_text(encoding="utf-8")) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    raise DataError(f"{folder}: a YOLO folder needs its class names in classes.txt (one a line) or data.yaml (names).")


def read_yolo(folder: str | os.PathLike) -> TaskData:
    """A YOLO folder (``images/``, ``labels/``, ``classes.txt`` or ``data.yaml``) as detection data."""
    folder = Path(folder)
    names = _yolo_names(folder)
    images = _images_in(folder / "images")
    if not images:
        raise DataError(f"{folder / 'images'}: no images ({', '.join(IMAGE_EXTENSIONS)}).")
    items, targets = [], []
    for image in images:
        h, w = _size_of(image, str(image))
        label_file = folder / "labels" / (image.stem + ".txt")
        boxes, labels = [], []
        lines = label_file.read_text(encoding="utf-8").splitlines() if label_file.is_file() else []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{label_file}, line {n}"
            fields = line.split()
            try:
                cls, cx, cy, bw, bh = int(fields[0]), *(float(v) for v in fields[1:5])
                if len(fields) != 5:
                    raise ValueError
            except (ValueError, IndexError):
                raise DataError(f"{where}: {line.strip()!r} is not 'class cx cy w h' (an int, then four fractions "
                                f"of the image).") from None
            if not 0 <= cls < len(names):
                raise DataError(f"{where}: class {cls} is not among the {len(names)} classes 0..{len(names) - 1} "
                                f"({', '.join(names)}).")
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            check_boxes(np.array([box]), np.array([cls]), (h, w), len(names), where)
            boxes.append(box)
            labels.append(cls)
        items.append(str(image))
        targets.append(box_target(boxes, labels, (h, w)))
    return TaskData(items, _objects(targets), "image", task="detection", label_names=names, name=folder.name,
                    source=str(folder))


# ---------------------------------------------------------------- mask folders


_MASK_LAYOUTS = (("images", "masks"), ("JPEGImages", "SegmentationClass"))


def is_mask_folder(path: Path) -> bool:
    return path.is_dir() and any((path / a).is_dir() and (path / b).is_dir() for a, b in _MASK_LAYOUTS)


def read_mask_folder(folder: str | os.PathLike) -> TaskData:
    """Images with one PNG mask each (class index per pixel, 255 ignored) as segmentation data."""
    from PIL import Image

    folder = Path(folder)
    image_dir, mask_dir = next((folder / a, folder / b) for a, b in _MASK_LAYOUTS
                               if (folder / a).is_dir() and (folder / b).is_dir())
    images = _images_in(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}).")
    names_file = folder / "classes.txt"
    names = ([line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
             if names_file.is_file() else None)
    items, masks = [], []
    for image in images:
        mask_file = mask_dir / (image.stem + ".png")
        if not mask_file.is_file():
            raise DataError(f"{image}: no mask {mask_file} (one PNG per image, same name).")
        try:
            with Image.open(mask_file) as im:
                if im.mode not in ("P", "L", "I", "I;16", "1"):
                    raise DataError(f"{mask_file}: a mask must be a one-channel PNG of class indices (mode P or L); "
                                    f"it is mode {im.mode}.")
                mask = np.asarray(im)
        except OSError as exc:
            raise DataError(f"Cannot read mask {mask_file}: {exc}") from None
        h, w = _size_of(image, str(image))
        if mask.shape != (h, w):
            raise DataError(f"{mask_file}: the mask is {mask.shape[1]}x{mask.shape[0]} but its image {image.name} is "
                            f"{w}x{h}.")
        items.append(str(image))
        masks.append(mask)
    if names is None:
        top = max(int(np.max(m[m != IGNORE_PIXEL], initial=0)) for m in masks)
        names = [f"class_{c}" for c in range(top + 1)]
    for m, f in zip(masks, images):
        check_mask(m, len(names), str(mask_dir / (f.stem + ".png")))
    return TaskData(items, _objects(masks), "image", task="segmentation", label_names=names, name=folder.name,
                    source=str(folder))


def read_dense(path: str | os.PathLike, task: str | None = None) -> TaskData | None:
    """Detection or segmentation data at ``path`` in any format above, or ``None`` when it is none of them."""
    path = Path(path)
    if is_coco(path):
        return read_coco(path, task=task)
    if is_voc(path) and task in (None, "detection"):
        return read_voc(path)
    if is_yolo(path) and task in (None, "detection"):
        return read_yolo(path)
    if is_mask_folder(path) and task in (None, "segmentation"):
        return read_mask_folder(path)
    return None
