"""Automatic choice of the migration strength: alpha per smoothing group, searched on data."""

from smoothquant.search.alpha import DEFAULT_GRID, AlphaSearch, alphas_from_recipe, search_alpha

__all__ = ["DEFAULT_GRID", "AlphaSearch", "alphas_from_recipe", "search_alpha"]
