"""Registry of cases for the shared property suite: one module per concern.

Each module defines ``CASES: list[helpers.Case]``; see ``tests/helpers.py``.
"""
