"""The demo's scene families and splits: descriptions come from r1v_job.synthetic without changing a
byte of what it drew before; the training, filler, validation and held-out families are disjoint;
each run draws only the OOD split it scores."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from demo.scenes import FAMILIES, SceneConfig, write_ood_split, write_training_scenes
from r1v_job.synthetic import (CLEVR_STYLE, COLOUR_NAMES, SHAPES, SUPERCLEVR_STYLE, SceneStyle, draw_described_scene,
                               draw_scene, read_jsonl, reading_order, write_clevr_train, write_instruct_train)


def test_described_scene_is_the_drawn_scene_and_lists_every_object():
    for style in (CLEVR_STYLE, replace(SUPERCLEVR_STYLE, cell=28)):
        for seed in range(5):
            image = draw_scene(style, 4, 112, random.Random(seed))
            described, objects = draw_described_scene(style, 4, 112, random.Random(seed))
            assert image.tobytes() == described.tobytes()
            assert len(objects) == 4
            assert {o["shape"] for o in objects} <= set(style.shapes)
            assert all(o["size"] in ("small", "large") and not o["colour"].startswith("rgb") for o in objects)
            # Each object's centre is on a pixel of a colour other than the floor's.
            assert all(image.getpixel((int(o["x"]), int(o["y"]))) != style.background for o in objects)


def test_describe_adds_the_scenes_file_and_leaves_the_rows_alone(tmp_path):
    plain = write_clevr_train(tmp_path / "plain", 8, 112, seed=1)
    described = write_clevr_train(tmp_path / "described", 8, 112, seed=1, describe=True)
    assert plain.read_bytes() == described.read_bytes()
    assert not (plain.parent / "scenes.jsonl").exists()
    rows, scenes = read_jsonl(described), read_jsonl(described.parent / "scenes.jsonl")
    assert [r["image"] for r in rows] == [s["image"] for s in scenes]
    assert [r["solution"] for r in rows] == [f"<answer> {len(s['objects'])} </answer>" for s in scenes]
    for name in ("clevr_000000.png", "clevr_000007.png"):
        assert (plain.parent / "images" / name).read_bytes() == (described.parent / "images" / name).read_bytes()


def test_each_run_draws_only_the_ood_split_it_scores(tmp_path):
    cfg = SceneConfig(instruct=4, warmup=4, dev=2, train=4, eval_id=2, eval_ood=3, validation=5)
    scenes = write_training_scenes(tmp_path / "h", cfg)
    assert scenes.instruct.is_file() and scenes.warmup.is_file() and scenes.dev.is_file()
    assert not scenes.eval_ood.parent.exists() and not scenes.ood("validation").parent.exists()
    assert len(read_jsonl(write_ood_split(tmp_path / "h", cfg))) == 3
    assert {r["question"] for r in read_jsonl(scenes.eval_ood)} == {"How many different items are there in the image?"}
    assert not scenes.ood("validation").parent.exists()

    design = SceneConfig(**{**cfg.__dict__, "ood_split": "validation"})
    scenes = write_training_scenes(tmp_path / "v", design)
    assert len(read_jsonl(write_ood_split(tmp_path / "v", design))) == 5
    assert not scenes.eval_ood.parent.exists()
    with pytest.raises(ValueError, match="ood_split 'test': expected one of validation, heldout"):
        SceneConfig(ood_split="test").ood_style()


def test_the_families_share_no_shape_and_no_colour():
    for a in FAMILIES:
        for b in FAMILIES:
            if a < b:
                assert not set(FAMILIES[a][0]) & set(FAMILIES[b][0]), (a, b)
                assert not set(FAMILIES[a][1]) & set(FAMILIES[b][1]), (a, b)
    # and the split styles are those families
    cfg = SceneConfig()
    assert (cfg.train_style().shapes, cfg.train_style().colours) == FAMILIES["training"]
    assert (cfg.validation_style().shapes, cfg.validation_style().colours) == FAMILIES["validation"]
    assert (cfg.heldout_style().shapes, cfg.heldout_style().colours) == FAMILIES["heldout"]
    assert cfg.validation_style().counts == cfg.heldout_style().counts
    assert cfg.validation_style().radius == cfg.heldout_style().radius


def test_the_instruct_family_holds_the_scored_ood_family_only_when_asked():
    out = SceneConfig(ood_split="validation").instruct_style()
    assert set(out.shapes) == set(FAMILIES["training"][0]) | set(FAMILIES["filler"][0])
    inside = SceneConfig(ood_split="validation", instruct_ood=True).instruct_style()
    assert set(inside.shapes) - set(out.shapes) == set(FAMILIES["validation"][0])
    assert set(inside.colours) - set(out.colours) == set(FAMILIES["validation"][1])
    held = SceneConfig(ood_split="heldout", instruct_ood=True).instruct_style()
    assert set(held.shapes) - set(out.shapes) == set(FAMILIES["heldout"][0])  # never both OOD families


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_drawn_within_its_cell_in_its_colour(shape):
    style = SceneStyle("one", (shape,), ((250, 128, 114),), (0.07, 0.115), (1, 1), (128, 128, 128), cell=28)
    image, (obj,) = draw_described_scene(style, 1, 112, random.Random(7))
    painted = [(x, y) for x in range(112) for y in range(112) if image.getpixel((x, y)) == (250, 128, 114)]
    assert len(painted) >= 40 and obj["colour"] == "salmon"
    xs, ys = [x for x, _ in painted], [y for _, y in painted]
    assert max(xs) // 28 == min(xs) // 28 and max(ys) // 28 == min(ys) // 28  # one cell


def test_instruct_rows_ask_about_shapes_and_colours_and_describe_in_reading_order(tmp_path):
    style = SceneConfig().instruct_style()
    path = write_instruct_train(tmp_path, 300, 112, seed=2, style=style)
    rows = read_jsonl(path)
    by_task = {t: [r for r in rows if r["task"] == t] for t in ("shape", "colour", "describe")}
    assert all(60 <= len(v) <= 150 for v in by_task.values()), {k: len(v) for k, v in by_task.items()}
    for task in ("shape", "colour"):
        answers = [r["solution"] for r in by_task[task]]
        assert 0.3 < answers.count("<answer> no </answer>") / len(answers) < 0.7
    # The answers are true of the drawn scene: redraw it from the same stream and compare.
    stream = random.Random(f"{style.name}-2")
    for r in rows[:40]:
        _, objects = draw_described_scene(style, stream.randint(*style.counts), 112, stream)
        if r["task"] == "describe":
            listed = r["solution"][len("<answer> "):-len(" </answer>")].split(", ")
            assert listed == [f"{o['colour']} {o['shape']}" for o in reading_order(objects, 28)]
        else:
            key = r["task"]
            value = r["problem"].removeprefix("Is there a ").removesuffix("?").removesuffix(" object")
            truth = "yes" if value in {o[key] for o in objects} else "no"
            assert r["solution"] == f"<answer> {truth} </answer>"
            assert value in (style.shapes if key == "shape" else [COLOUR_NAMES[c] for c in style.colours])
