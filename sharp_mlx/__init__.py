"""sharp-mlx: SHARP (shared MLP weights + low-rank recovery) for MLX language models."""

from ._blas import load_openblas

load_openblas()

__version__ = "0.1.0"
