"""Recipes: YAML files validated by a strict schema (schema.py), loaded with extends and overrides (load.py)."""

from hfpipe.recipe.load import apply_overrides, dump_recipe, load_recipe

__all__ = ["apply_overrides", "dump_recipe", "load_recipe"]
