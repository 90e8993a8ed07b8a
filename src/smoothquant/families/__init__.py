"""Model-family knowledge, as data: one table per family, resolved against the module tree."""

from smoothquant.families.moe import UnfusedExperts, prepare_model
from smoothquant.families.resolve import (
    ResolvedGroup,
    ResolvedModel,
    family_of_type,
    find_family,
    register_family,
    resolve,
    supported_families,
    unregister_family,
)
from smoothquant.families.spec import Chunk, Experts, Family, GatedMLP, Group, Layout
from smoothquant.families.tables import FAMILIES

__all__ = [
    "FAMILIES",
    "Chunk",
    "Experts",
    "Family",
    "GatedMLP",
    "Group",
    "Layout",
    "ResolvedGroup",
    "ResolvedModel",
    "UnfusedExperts",
    "family_of_type",
    "find_family",
    "prepare_model",
    "register_family",
    "resolve",
    "supported_families",
    "unregister_family",
]
