"""The build: plain setuptools (everything else is in pyproject.toml).

With ``TOKENWAY_COMPILE=1`` (``make wheel``) the modules every request with a virtual key runs
through (the key lookup, the rate limits, the budget, the in-memory counters, the prices) are
compiled with mypyc: the wheel to deploy. Without it, the editable install ``make setup`` makes,
everything is plain Python, so an edit to any module always takes effect (a compiled module next
to its source would be imported instead of it).
"""

import os

from setuptools import setup

COMPILED = [
    "tokenway/policies/auth.py",
    "tokenway/policies/limits.py",
    "tokenway/policies/budget.py",
    "tokenway/stores/memory.py",
    "tokenway/usage/cost.py",
]


def ext_modules() -> list:
    if os.environ.get("TOKENWAY_COMPILE") != "1":
        return []
    from mypyc.build import mypycify  # only this build needs mypy (the dev extra has it)

    return mypycify(COMPILED, opt_level="3")


setup(ext_modules=ext_modules())
