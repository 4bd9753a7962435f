"""The registry functions are public callables but not transforms."""

from helpers import register_not_transform

register_not_transform("get", "available", "describe")
CASES: list = []
