"""Offline merging functions: public callables, not gradient transformations."""

from helpers import register_not_transform

register_not_transform(
    "uniform_soup",
    "weighted_average",
    "greedy_soup",
    "interpolate",
    "slerp",
    "model_stock",
    "task_arithmetic",
)

CASES: list = []

register_not_transform(
    "mlp_permutation_spec",
    "weight_matching",
    "apply_permutation",
    "align_and_interpolate",
    "regmean",
)
