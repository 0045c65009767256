"""Every recipe in ``recipes/`` is a valid ``dermadv train --config`` file: each key a TrainConfig field, each
value accepted (a misspelt key or a bad value would otherwise surface only when someone runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermadv.cli.train import load_config
from dermadv.presets import preset_train_config
from dermadv.training.classifier import TrainConfig

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def test_recipes_exist() -> None:
    assert len(RECIPES) >= 4, RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_as_a_train_config(recipe: Path) -> None:
    cfg = load_config(recipe, TrainConfig, {"out": Path("unused")})
    assert isinstance(cfg, TrainConfig)
    text = recipe.read_text()
    assert "dermadv train --config recipes/" + recipe.name in text  # the command that runs it is written in it


@pytest.mark.parametrize(("preset", "recipe"), [("cpu", "ham10000-cpu.yaml"), ("cpu-64", "ham10000-scratch.yaml")])
def test_a_preset_trains_its_classifier_as_its_recipe_does(preset: str, recipe: str) -> None:
    path = Path(__file__).parents[2] / "recipes" / recipe
    from_recipe = load_config(path, TrainConfig, {"out": Path("unused")})
    from_preset = TrainConfig(out=Path("unused"), **preset_train_config(preset))
    assert from_preset == from_recipe
