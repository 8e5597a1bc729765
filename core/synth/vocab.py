"""The words of the shape world and what they look like: colours, backgrounds, shapes, sizes, regions.

Colours are saturated and backgrounds light, so a shape never blends into its background, and the colours
are far apart in RGB, so the dominant colour of a region names one of them without doubt.
"""

from __future__ import annotations

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 20),
    "green": (30, 150, 55),
    "blue": (35, 80, 215),
    "purple": (130, 50, 180),
    "pink": (240, 105, 180),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light grey": (212, 212, 212),
    "light blue": (195, 222, 250),
    "light green": (205, 240, 205),
    "light pink": (250, 218, 228),
}

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")

# Radius as a fraction of the image side. A 3x3 grid cell is 1/3 wide, so even a large shape (0.30 across)
# stays inside its cell: two shapes never touch and each region holds at most one.
SIZES: dict[str, float] = {"small": 0.09, "large": 0.15}

# Region name -> (column, row) in the 3x3 grid, and the phrase a caption uses for it.
REGIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "centre": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
REGION_PHRASES: dict[str, str] = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
CORNERS_AND_CENTRE = ("top left", "top right", "bottom left", "bottom right", "centre")

INK = (20, 20, 20)  # the hatched style's outline and hatch colour: darker than any palette colour
