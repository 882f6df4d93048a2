"""Offline image material for built data sets: natural photos and emoji rendered from Debian fonts.

Shared by the classification domain-shift set (:func:`transferkit.data.domains.load_emoji_styles`) and
the detection / segmentation scenes (:mod:`transferkit.data.emoji_scenes`):

* :func:`sample_photos`: scikit-learn's two sample photos, plus scikit-image's colour test photos
  when scikit-image is installed (both ship the files inside their wheels);
* :func:`render_emoji`: one emoji as an RGBA image (the alpha channel is its exact mask), drawn in
  colour (Noto Color Emoji) or as black line art (Symbola);
* :func:`read_emoji_test` / :func:`drawable_in_both`: Unicode's emoji list with groups, and the emoji
  both fonts draw (the same emoji and classes in both styles).
"""
from __future__ import annotations

import functools
import glob
from pathlib import Path

import numpy as np

from transferkit.errors import DataError

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
NOTO_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SYMBOLA_FONTS = ("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf", "/usr/share/fonts/truetype/*/Symbola*.ttf")
EMOJI_STYLES = ("color", "line")
#: The canvas an emoji is drawn on (Noto's bitmap glyphs are 136 x 128 at size 109).
EMOJI_CANVAS = (136, 128)
_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
_DEBIAN = {"emoji-test.txt": "unicode-data", "Noto Color Emoji": "fonts-noto-color-emoji", "Symbola": "fonts-symbola"}
#: scikit-image's colour photos that ship inside its wheel (no download), in a fixed order.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def sample_photos(include_skimage: bool = False) -> list[np.ndarray]:
    """Natural colour photos, offline: scikit-learn's ``china.jpg`` and ``flower.jpg`` (427x640 RGB uint8),
    then, with ``include_skimage`` and scikit-image installed, its :data:`SKIMAGE_PHOTOS`."""
    return list(_photos(include_skimage))


@functools.lru_cache(maxsize=2)
def _photos(include_skimage: bool) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]
    if include_skimage:
        try:
            import skimage.data
        except ImportError:
            return tuple(photos)
        photos += [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)[..., :3] for name in SKIMAGE_PHOTOS]
    return tuple(photos)


def _missing(what: str, path: str) -> DataError:
    return DataError(f"{what} not found ({path}). The emoji data renders offline from Debian packages: "
                     f"`apt-get install -y {' '.join(_DEBIAN.values())}` ({what} is in {_DEBIAN[what]}).")


def symbola_path() -> str:
    for pattern in SYMBOLA_FONTS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise _missing("Symbola", SYMBOLA_FONTS[0])


@functools.lru_cache(maxsize=2)
def read_emoji_test(path: str = EMOJI_TEST) -> tuple[tuple[str, str, str], ...]:
    """``(emoji, group, name)`` of every fully-qualified emoji without a skin tone, groups but 'Component'."""
    if not Path(path).is_file():
        raise _missing("emoji-test.txt", path)
    out, group = [], None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and group and group != "Component":
            codes, rest = line.split(";", 1)
            chars = "".join(chr(int(c, 16)) for c in codes.split())
            if not _SKIN_TONES & set(chars):
                out.append((chars, group, rest.split("#", 1)[1].split(" ", 3)[-1].strip()))
    return tuple(out)


@functools.lru_cache(maxsize=2)
def drawable_in_both(path: str = EMOJI_TEST) -> tuple[int, ...]:
    """Indices into :func:`read_emoji_test` of the emoji Symbola draws (single code points), which Noto draws too."""
    from fontTools.ttLib import TTFont

    with TTFont(symbola_path(), lazy=True) as tt:
        cmap = set(tt.getBestCmap())

    def has(chars: str) -> bool:
        bare = chars.replace("\ufe0f", "")
        return len(bare) == 1 and ord(bare) in cmap

    return tuple(i for i, (ch, _, _) in enumerate(read_emoji_test(path)) if has(ch))


def emoji_font(style: str):
    """The Pillow font of a style: Noto Color Emoji at 109 (its bitmap size) or Symbola at 100.

    Both fonts must be there for either style (the styles hold the same emoji, those both fonts draw).
    """
    if style not in EMOJI_STYLES:
        raise DataError(f"Unknown emoji style {style!r}. Available: {', '.join(EMOJI_STYLES)}.")
    if not Path(NOTO_EMOJI_FONT).is_file():
        raise _missing("Noto Color Emoji", NOTO_EMOJI_FONT)
    return _font(NOTO_EMOJI_FONT, 109) if style == "color" else _font(symbola_path(), 100)


@functools.lru_cache(maxsize=4)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def render_emoji(chars: str, style: str, font=None):
    """One emoji on a transparent :data:`EMOJI_CANVAS` RGBA image; its alpha channel is the drawn shape.

    Colour: Noto's embedded colour bitmap at the canvas origin. Line art: Symbola in black, centred,
    with the emoji variation selector U+FE0F removed (Symbola has no glyph for it).
    """
    from PIL import Image, ImageDraw

    font = font or emoji_font(style)
    canvas = Image.new("RGBA", EMOJI_CANVAS, (255, 255, 255, 0))
    if style == "color":
        ImageDraw.Draw(canvas).text((0, 0), chars, font=font, embedded_color=True)
    else:
        w, h = EMOJI_CANVAS
        ImageDraw.Draw(canvas).text((w // 2, h // 2), chars.replace("\ufe0f", ""), font=font, fill=(0, 0, 0, 255),
                                    anchor="mm")
    return canvas
