"""Load Debian's OpenBLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links the reference BLAS (~7 GFLOP/s). Loading `libopenblas.so.0`
with RTLD_GLOBAL before `mlx` is imported makes MLX's CPU matmuls resolve to OpenBLAS (~30x
faster). On macOS MLX uses Metal and Accelerate, so nothing is done there.
"""

import ctypes
import os
import sys

_LIBRARY = "libopenblas.so.0"
_state = {"loaded": None}


def load_openblas() -> bool:
    """Load OpenBLAS globally once (Linux only); say once on stderr when it is missing."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    if not sys.platform.startswith("linux") or os.environ.get("SHARP_MLX_NO_OPENBLAS"):
        _state["loaded"] = False
        return False
    if "mlx.core" in sys.modules:
        print(
            "sharp_mlx: mlx was imported before sharp_mlx; OpenBLAS cannot speed it up now "
            "(import sharp_mlx first).",
            file=sys.stderr,
        )
    try:
        ctypes.CDLL(_LIBRARY, mode=ctypes.RTLD_GLOBAL)
        _state["loaded"] = True
    except OSError:
        print(
            f"sharp_mlx: {_LIBRARY} not found; MLX runs on its slow reference BLAS. "
            "Install it with: apt-get install libopenblas0-pthread",
            file=sys.stderr,
        )
        _state["loaded"] = False
    return _state["loaded"]
