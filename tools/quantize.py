"""Quantize a SHARP (or plain) mlx-lm model directory (affine 2-8 bit or an mlx-lm mixed recipe).

    python tools/quantize.py --model sharp_models/smollm2-moderate -o sharp_models/q4 --q-bits 4

See `sharp_mlx/quantize.py` for what is quantized and what is kept as is.
"""

from sharp_mlx.quantize import main  # sharp_mlx loads OpenBLAS before mlx is imported

if __name__ == "__main__":
    main()
