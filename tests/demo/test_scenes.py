"""Scene descriptions come from r1v_job.synthetic without changing a byte of what it drew before."""

from __future__ import annotations

import random
from dataclasses import replace

from demo.scenes import SceneConfig, write_heldout, write_training_scenes
from r1v_job.synthetic import (CLEVR_STYLE, SUPERCLEVR_STYLE, draw_described_scene, draw_scene, read_jsonl,
                               write_clevr_train)


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


def test_the_heldout_split_is_drawn_only_on_request(tmp_path):
    cfg = SceneConfig(warmup=4, dev=2, train=4, eval_id=2, eval_ood=3)
    scenes = write_training_scenes(tmp_path, cfg)
    assert scenes.warmup.is_file() and scenes.dev.is_file() and scenes.train_scenes.is_file()
    assert not scenes.eval_ood.parent.exists()
    assert len(read_jsonl(write_heldout(tmp_path, cfg))) == 3
    assert {r["question"] for r in read_jsonl(scenes.eval_ood)} == {"How many different items are there in the image?"}
