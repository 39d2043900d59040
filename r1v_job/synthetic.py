"""Synthetic counting scenes: a CLEVR-like train split and a SuperCLEVR-like held-out split.

    python -m r1v_job.synthetic --out runs/scenes [--train 256 --test 64 --size 112 --seed 0]

writes, with no network and deterministically for a seed:
- `OUT/clevr/train.jsonl` + `OUT/clevr/images/`: the CLEVR-70k schema, one row per scene:
  {"image": "images/clevr_000000.png", "problem": "How many items are there in the image?",
   "solution": "<answer> 3 </answer>"};
- `OUT/superclevr/questions.jsonl` + `OUT/superclevr/images/`: R1-V's SuperCLEVR eval format:
  {"image_path": "./images/superclevr_000000.png", "question": "How many different items are there
   in the image?", "ground_truth": 4}.

The held-out style differs from the train style in shapes, colours and sizes (and, by default, in
the range of object counts), as SuperCLEVR's vehicles differ from CLEVR's primitives.

`write_clevr_train(..., describe=True)` also writes `OUT/clevr/scenes.jsonl`, each scene's objects as
CLEVR's scene files give them (shape, colour, size, position), one row per image:
{"image": "images/clevr_000000.png", "objects": [{"shape": "cube", "colour": "red", "size": "small",
 "x": 20.5, "y": 31.0}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

CLEVR_QUESTION = "How many items are there in the image?"
SUPERCLEVR_QUESTION = "How many different items are there in the image?"


@dataclass(frozen=True)
class SceneStyle:
    """What a family of scenes looks like."""

    name: str
    shapes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    radius: tuple[float, float]  # object radius as a fraction of the image side, min..max
    counts: tuple[int, int]  # inclusive range of objects per scene
    background: tuple[int, int, int]
    # 0: objects anywhere, apart from each other. N > 0: at most one object per N x N pixel cell of
    # the image, wholly inside it (see draw_scene).
    cell: int = 0


# CLEVR: cubes, spheres, cylinders in CLEVR's eight colours, two sizes, on grey.
CLEVR_STYLE = SceneStyle(
    name="clevr",
    shapes=("cube", "sphere", "cylinder"),
    colours=((87, 87, 87), (173, 35, 35), (42, 75, 215), (29, 105, 20),
             (129, 74, 25), (129, 38, 192), (41, 208, 208), (255, 238, 51)),
    radius=(0.06, 0.10),
    counts=(1, 6),
    background=(128, 128, 128),
)
# SuperCLEVR-like: other shapes, other colours, other sizes, more objects, a lighter floor.
SUPERCLEVR_STYLE = SceneStyle(
    name="superclevr",
    shapes=("triangle", "diamond", "cross"),
    colours=((255, 140, 0), (255, 105, 180), (245, 245, 245), (20, 20, 20), (0, 128, 128)),
    radius=(0.045, 0.075),
    counts=(3, 10),
    background=(176, 170, 160),
)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    if shape == "sphere":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "cube":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "cylinder":  # a side view: a body with an elliptic top
        draw.rectangle([cx - r, cy - r * 0.6, cx + r, cy + r], fill=colour)
        draw.ellipse([cx - r, cy - r, cx + r, cy - r * 0.2], fill=tuple(min(255, c + 40) for c in colour))
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        w = r / 2.5
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    elif shape in _POLYGONS:
        draw.polygon([(cx + r * x, cy + r * y) for x, y in _POLYGONS[shape]], fill=colour)
    elif shape == "semicircle":  # the upper half of a disc
        draw.pieslice([cx - r, cy - r * 0.5, cx + r, cy + r * 1.5], 180, 360, fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, round(r / 2.5)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _regular(sides: int, inner: float = 1.0) -> tuple[tuple[float, float], ...]:
    """A regular polygon (or, with `inner` < 1, a star of `sides` points) in the unit circle, one
    corner up."""
    corners = sides * (2 if inner < 1 else 1)
    return tuple(((inner if inner < 1 and k % 2 else 1.0) * math.sin(2 * math.pi * k / corners),
                  -(inner if inner < 1 and k % 2 else 1.0) * math.cos(2 * math.pi * k / corners))
                 for k in range(corners))


# Outlines in units of the radius, centred on the object.
_POLYGONS = {
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "star": _regular(5, inner=0.45),
    "trapezoid": ((-1.0, 0.7), (1.0, 0.7), (0.5, -0.7), (-0.5, -0.7)),
}
SHAPES = ("cube", "sphere", "cylinder", "triangle", "diamond", "cross", "semicircle", "ring", *_POLYGONS)


# Colour names for scene descriptions, as CLEVR's scene files name colours.
COLOUR_NAMES = {
    (87, 87, 87): "gray", (173, 35, 35): "red", (42, 75, 215): "blue", (29, 105, 20): "green",
    (129, 74, 25): "brown", (129, 38, 192): "purple", (41, 208, 208): "cyan", (255, 238, 51): "yellow",
    (255, 140, 0): "orange", (255, 105, 180): "pink", (245, 245, 245): "white", (20, 20, 20): "black",
    (0, 128, 128): "teal",
    # Colours of the demo's other scene families (demo/scenes.py).
    (20, 30, 110): "navy", (195, 176, 110): "khaki", (150, 225, 175): "mint", (135, 190, 235): "sky",
    (50, 205, 50): "lime", (250, 128, 114): "salmon", (190, 170, 230): "lavender", (128, 128, 0): "olive",
    (128, 0, 0): "maroon",
}
COLOURS = {name: rgb for rgb, name in COLOUR_NAMES.items()}


def draw_described_scene(style: SceneStyle, count: int, size: int | tuple[int, int],
                         rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """`draw_scene`'s image (the same pixels for the same generator state) and its objects in
    drawing order: shape, colour name, size ("small" below the middle of the style's radius range,
    else "large", as CLEVR's two sizes) and centre in pixels."""
    width, height = (size, size) if isinstance(size, int) else size
    image = Image.new("RGB", (width, height), style.background)
    draw = ImageDraw.Draw(image)
    middle = sum(style.radius) / 2 * min(width, height)
    objects = []
    for cx, cy, r in (_cell_places if style.cell else _free_places)(style, count, width, height, rng):
        shape, colour = rng.choice(style.shapes), rng.choice(style.colours)
        _draw(draw, shape, cx, cy, r, colour)
        objects.append({"shape": shape, "colour": COLOUR_NAMES.get(colour, "rgb{}".format(colour)),
                        "size": "small" if r < middle else "large", "x": round(cx, 1), "y": round(cy, 1)})
    return image, objects


def draw_scene(style: SceneStyle, count: int, size: int | tuple[int, int], rng: random.Random) -> Image.Image:
    """`count` non-overlapping objects of `style` on a `size`x`size` (or (width, height)) image.
    Object radii are fractions of the shorter side."""
    return draw_described_scene(style, count, size, rng)[0]


def _free_places(style: SceneStyle, count: int, width: int, height: int, rng: random.Random):
    placed: list[tuple[float, float, float]] = []
    attempts = 0
    while len(placed) < count:
        attempts += 1
        if attempts > 10_000:
            raise ValueError(f"cannot place {count} objects of style {style.name} on a {width}x{height}px image")
        r = rng.uniform(*style.radius) * min(width, height)
        cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        # Keep a gap between objects so every object stays countable.
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 2) ** 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _cell_places(style: SceneStyle, count: int, width: int, height: int, rng: random.Random):
    # Each object inside its own cell. With the cell equal to what one visual token sees (Qwen2-VL:
    # 28 px), no token holds parts of two objects, as at real resolution, where a CLEVR object
    # spans many tokens; a tiny image with free placement splits objects across tokens instead.
    columns, rows = width // style.cell, height // style.cell
    if count > columns * rows:
        raise ValueError(f"cannot place {count} objects of style {style.name} in {columns}x{rows} cells")
    places = []
    for index in rng.sample(range(columns * rows), count):
        r = min(rng.uniform(*style.radius) * min(width, height), style.cell / 2 - 1)
        x0, y0 = (index % columns) * style.cell, (index // columns) * style.cell
        places.append((x0 + rng.uniform(r + 1, style.cell - r - 1), y0 + rng.uniform(r + 1, style.cell - r - 1), r))
    return places


def write_described_split(out: Path, style: SceneStyle, n: int, size: int | tuple[int, int], seed: int):
    """Draw `n` scenes of `style`; yields (relative image path, the scene's objects)."""
    rng = random.Random(f"{style.name}-{seed}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        count = rng.randint(*style.counts)
        rel = f"images/{style.name}_{i:06d}.png"
        image, objects = draw_described_scene(style, count, size, rng)
        image.save(out / rel)
        yield rel, objects


def write_split(out: Path, style: SceneStyle, n: int, size: int | tuple[int, int], seed: int):
    """Draw `n` scenes of `style`; yields (relative image path, count)."""
    for rel, objects in write_described_split(out, style, n, size, seed):
        yield rel, len(objects)


def clevr_row(image: str, count: int) -> dict:
    """One CLEVR-70k row."""
    return {"image": image, "problem": CLEVR_QUESTION, "solution": f"<answer> {count} </answer>"}


def eval_row(image: str, count: int, question: str = SUPERCLEVR_QUESTION) -> dict:
    """One row of R1-V's SuperCLEVR eval format; `image` relative to the file's folder."""
    return {"image_path": f"./{image}", "question": question, "ground_truth": count}


def write_jsonl(path: str | Path, rows) -> Path:
    """One JSON object a line: the format of every file here."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_clevr_train(out: str | Path, n: int, size: int | tuple[int, int] = 112, seed: int = 0,
                      style: SceneStyle = CLEVR_STYLE, describe: bool = False) -> Path:
    """CLEVR-70k schema: image, problem, solution. Returns the jsonl path. With `describe`, each
    scene's objects also go to OUT/scenes.jsonl (see the module docstring)."""
    out = Path(out)
    scenes = list(write_described_split(out, style, n, size, seed))
    if describe:
        write_jsonl(out / "scenes.jsonl", ({"image": rel, "objects": objects} for rel, objects in scenes))
    return write_jsonl(out / "train.jsonl", (clevr_row(rel, len(objects)) for rel, objects in scenes))


def write_superclevr_eval(out: str | Path, n: int, size: int = 112, seed: int = 0,
                          style: SceneStyle = SUPERCLEVR_STYLE, question: str = SUPERCLEVR_QUESTION) -> Path:
    """R1-V's SuperCLEVR eval format: image_path, question, ground_truth. Returns the jsonl path."""
    out = Path(out)
    return write_jsonl(out / "questions.jsonl", (eval_row(rel, count, question)
                                                 for rel, count in write_split(out, style, n, size, seed)))


# Questions that are not about counting, over a scene's objects: the broad "Instruct" rows of the
# demo's pretraining (demo/sft.py), in the CLEVR-70k schema with a word or a list as the answer.
INSTRUCT_TASKS = {"shape": "Is there a {}?", "colour": "Is there a {} object?", "describe": "Describe the objects."}


def reading_order(objects: list[dict], cell: int = 0) -> list[dict]:
    """Objects top to bottom, left to right; with cell placement, by row of cells, then by x."""
    return sorted(objects, key=lambda o: ((o["y"] // cell) if cell else o["y"], o["x"]))


def instruct_row(image: str, objects: list[dict], style: SceneStyle, task: str, rng: random.Random) -> dict:
    """One non-counting question about a scene: "Is there a SHAPE?" / "Is there a COLOUR object?"
    (yes or no, half each where the family allows) or "Describe the objects." (colour and shape of
    each, in reading order)."""
    if task == "describe":
        answer = ", ".join(f"{o['colour']} {o['shape']}" for o in reading_order(objects, style.cell))
        return {"image": image, "problem": INSTRUCT_TASKS[task], "solution": f"<answer> {answer} </answer>",
                "task": task}
    key, family = ("shape", list(style.shapes)) if task == "shape" else \
        ("colour", [COLOUR_NAMES[c] for c in style.colours])
    present = sorted({o[key] for o in objects})
    absent = [v for v in family if v not in present]
    if absent and rng.random() < 0.5:
        value, answer = rng.choice(absent), "no"
    else:
        value, answer = rng.choice(present), "yes"
    return {"image": image, "problem": INSTRUCT_TASKS[task].format(value), "solution": f"<answer> {answer} </answer>",
            "task": task}


def write_instruct_train(out: str | Path, n: int, size: int = 112, seed: int = 0, style: SceneStyle = CLEVR_STYLE,
                         weights: tuple[float, float, float] = (0.35, 0.35, 0.30)) -> Path:
    """`n` scenes of `style`, one non-counting question each (INSTRUCT_TASKS, drawn with `weights`),
    in the CLEVR-70k schema plus the row's `task`. Returns the jsonl path."""
    out = Path(out)
    rng = random.Random(f"instruct-{style.name}-{seed}")
    rows = [instruct_row(rel, objects, style, rng.choices(list(INSTRUCT_TASKS), weights=weights)[0], rng)
            for rel, objects in write_described_split(out, style, n, size, seed)]
    return write_jsonl(out / "train.jsonl", rows)


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=256, help="CLEVR-like training scenes")
    parser.add_argument("--test", type=int, default=64, help="SuperCLEVR-like held-out scenes")
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-counts", type=_range, default=CLEVR_STYLE.counts, help="e.g. 1-6")
    parser.add_argument("--test-counts", type=_range, default=SUPERCLEVR_STYLE.counts, help="e.g. 3-10")
    args = parser.parse_args(argv)
    out = Path(args.out)
    from dataclasses import replace

    train = write_clevr_train(out / "clevr", args.train, args.size, args.seed,
                              replace(CLEVR_STYLE, counts=args.train_counts))
    test = write_superclevr_eval(out / "superclevr", args.test, args.size, args.seed,
                                 replace(SUPERCLEVR_STYLE, counts=args.test_counts))
    print(f"wrote {args.train} train scenes to {train} and {args.test} held-out scenes to {test}")


if __name__ == "__main__":
    main()
