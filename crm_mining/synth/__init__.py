"""Synthetic data generator: a retail shop (UCI Online Retail CSV), a bank (PKDD'99 Berka
``.asc`` tables), the loyalty-card links between them, and the truth of what was planted.

Needs only numpy, pandas and pyarrow (no Spark). See :func:`generate`.
"""
from .generator import generate

__all__ = ["generate"]
