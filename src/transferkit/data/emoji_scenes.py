"""Emoji pasted onto natural photos: detection and segmentation data with exact boxes and masks, built offline.

Provenance: the backgrounds are crops of scikit-learn's two sample photos (``china.jpg``,
``flower.jpg``) and, when scikit-image is installed, its colour test photos (``astronaut``, ``coffee``,
``chelsea``, ``rocket``, ``immunohistochemistry``, ``hubble_deep_field``), all shipped inside those
wheels. The objects are emoji from Unicode's ``emoji-test.txt`` (Debian ``unicode-data``) drawn by
Pillow from Debian's fonts: colour illustrations (``fonts-noto-color-emoji``) or black line art
(``fonts-symbola``) for a domain shift with the same emoji, places and classes. Classes are the 9
Unicode emoji groups (Activities, Animals & Nature, ...). An emoji's alpha channel, after scaling, is its
mask (alpha >= 128) and the tight box around that mask its box, so both are exact; objects never
overlap, so no mask hides another (``task="instance-segmentation"`` keeps each object's mask).

Every scene is a function of the seed alone (numpy ``default_rng``): the emoji kept per class, the
photo, crop, flip, and each object's emoji, size and place. Train and test scenes are drawn from
separate streams of the same seed, with the same emoji (new photos crops, sizes and places): the task
is to find and name these emoji in new scenes. ``per_class`` emoji per group are kept.
"""
from __future__ import annotations

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.data.rendering import (EMOJI_STYLES, EMOJI_TEST, drawable_in_both, emoji_font, read_emoji_test,
                                        render_emoji, sample_photos)
from transferkit.errors import ConfigError
from transferkit.tasks.detection import box_target
from transferkit.tasks.instance_segmentation import instance_target

SCENE_TASKS = ("detection", "segmentation", "instance-segmentation")


def _check(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
        raise ConfigError(f"The '{name}' option of emoji-scenes must be an int in {bound}. Got {value!r} instead.")


def _glyphs(style: str, chosen: list[str]) -> list[np.ndarray]:
    """Each chosen emoji as an RGBA array cropped to its drawn pixels."""
    font = emoji_font(style)
    out = []
    for ch in chosen:
        rgba = np.asarray(render_emoji(ch, style, font))
        ys, xs = np.nonzero(rgba[..., 3] >= 128)
        out.append(rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    return out


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
    arr = np.asarray(crop, dtype=np.uint8).copy()
    return arr[:, ::-1].copy() if rng.random() < 0.5 else arr


def _paste(canvas: np.ndarray, mask: np.ndarray, glyph: np.ndarray, box: tuple[int, int, int, int], value: int) -> None:
    from PIL import Image

    x1, y1, x2, y2 = box
    scaled = np.asarray(Image.fromarray(glyph).resize((x2 - x1, y2 - y1), Image.LANCZOS), dtype=np.float32)
    alpha = scaled[..., 3:] / 255.0
    region = canvas[y1:y2, x1:x2].astype(np.float32)
    canvas[y1:y2, x1:x2] = np.clip(alpha * scaled[..., :3] + (1 - alpha) * region, 0, 255).round().astype(np.uint8)
    mask[y1:y2, x1:x2][scaled[..., 3] >= 128] = value


def _scene(rng: np.random.Generator, photos, glyphs, classes, size: int, max_objects: int):
    """One scene: image, boxes (tight around each mask), labels, semantic mask (0 background, k+1 group k), and
    each object's mask."""
    image = _background(rng, photos, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes, labels, objects = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        # the same draws whatever the glyph's shape, so both styles give the same scenes
        k, side, places = int(rng.integers(len(glyphs))), rng.uniform(0.2, 0.45) * size, rng.random((30, 2))
        glyph = glyphs[k]
        scale = side / max(glyph.shape[:2])
        gh, gw = max(4, round(glyph.shape[0] * scale)), max(4, round(glyph.shape[1] * scale))
        for fx, fy in places:  # a free place: objects never overlap
            x1, y1 = int(fx * (size - gw + 1)), int(fy * (size - gh + 1))
            if all(x1 >= b[2] + 1 or x1 + gw + 1 <= b[0] or y1 >= b[3] + 1 or y1 + gh + 1 <= b[1] for b in boxes):
                break
        else:
            continue
        before = mask.copy()
        _paste(image, mask, glyph, (x1, y1, x1 + gw, y1 + gh), classes[k] + 1)
        ys, xs = np.nonzero(mask != before)
        if not len(ys):
            continue
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        labels.append(classes[k])
        objects.append(mask != before)
    return image, boxes, labels, mask, objects


def build_emoji_scenes(n_train: int = 200, n_test: int = 100, *, size: int = 160, style: str = "color",
                       task: str = "detection", seed: int = 0, per_class: int = 4, max_objects: int = 3,
                       emoji_test: str = EMOJI_TEST) -> tuple[TaskData, TaskData]:
    """Train and test scenes of emoji on photos (see the module docstring for the recipe and provenance).

    Args:
        n_train, n_test: scenes per split.
        size: image side in pixels.
        style: ``"color"`` (Noto Color Emoji) or ``"line"`` (Symbola line art; same scenes otherwise).
        task: ``"detection"`` (boxes and labels), ``"segmentation"`` (a class per pixel, 0 = background) or
            ``"instance-segmentation"`` (boxes, labels and each object's mask).
        seed: everything random about the scenes.
        per_class: emoji kept per Unicode group.
        max_objects: objects per scene (at least 1).
    """
    for name, value, low, high in (("n_train", n_train, 1, None), ("n_test", n_test, 1, None),
                                   ("size", size, 32, 1024), ("per_class", per_class, 1, 50),
                                   ("max_objects", max_objects, 1, 10), ("seed", seed, 0, None)):
        _check(name, value, low, high)
    if style not in EMOJI_STYLES:
        raise ConfigError(f"The 'style' option of emoji-scenes must be one of {', '.join(EMOJI_STYLES)}. "
                          f"Got {style!r} instead.")
    if task not in SCENE_TASKS:
        raise ConfigError(f"The 'task' option of emoji-scenes must be one of {', '.join(SCENE_TASKS)}. "
                          f"Got {task!r} instead.")
    entries = read_emoji_test(emoji_test)
    keep = drawable_in_both(emoji_test)
    groups = sorted({entries[i][1] for i in keep})
    rng = np.random.default_rng([seed, 0])
    chosen, classes = [], []
    for g, group in enumerate(groups):
        members = [entries[i][0] for i in keep if entries[i][1] == group]
        for j in rng.choice(len(members), size=min(per_class, len(members)), replace=False):
            chosen.append(members[int(j)])
            classes.append(g)
    glyphs = _glyphs(style, chosen)
    photos = sample_photos(include_skimage=True)
    font = "Noto Color Emoji" if style == "color" else "Symbola line art"
    source = (f"{len(chosen)} emoji ({per_class} per Unicode group, {font}) pasted on crops of {len(photos)} "
              f"scikit-learn/scikit-image photos at {size} px, seed {seed} (transferkit.data.emoji_scenes)")
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        srng = np.random.default_rng([seed, 1 if split == "train" else 2])
        scenes = [_scene(srng, photos, glyphs, classes, size, max_objects) for _ in range(n)]
        images = np.stack([s[0] for s in scenes])
        if task == "detection":
            targets, names = [box_target(s[1], s[2], (size, size)) for s in scenes], list(groups)
        elif task == "instance-segmentation":
            targets = [instance_target(np.array(s[4], dtype=np.uint8).reshape(-1, size, size), s[2], (size, size),
                                       boxes=s[1]) for s in scenes]
            names = list(groups)
        else:
            targets, names = [s[3] for s in scenes], ["background", *groups]
        out.append(TaskData(images, _objects(targets), "image", task=task, label_names=names,
                            name=f"emoji-scenes-{style}-{split}", source=source))
    return out[0], out[1]


def _objects(rows: list) -> np.ndarray:
    arr = np.empty(len(rows), dtype=object)
    arr[:] = rows
    return arr
