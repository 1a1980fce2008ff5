"""FinLoRA study kit."""
from . import quiet  # noqa: F401  (filters two library messages the kit provokes; see quiet.py)
