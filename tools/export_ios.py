"""Export a SHARP model (and optionally its original) as a bundle for the iPhone app.

    python tools/export_ios.py --model sharp_models/q4 --original sharp_models/plain-q4 -o bundle

`swift run -c release sharp-report bundle` verifies it. See `sharp_mlx/export.py` for the layout.
"""

from sharp_mlx.export import main  # sharp_mlx loads OpenBLAS before mlx is imported

if __name__ == "__main__":
    main()
