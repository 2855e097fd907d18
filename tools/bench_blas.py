"""Print MLX f32 matmul GFLOP/s with and without OpenBLAS preloaded, side by side in one run.

Each variant runs in its own subprocess (the BLAS is chosen when mlx is first imported).
Usage: python tools/bench_blas.py [--size 1024] [--repeats 5]
"""

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import sys, time, json
if sys.argv[1] == "openblas":
    import sharp_mlx  # loads OpenBLAS before mlx
import mlx.core as mx
n, repeats = int(sys.argv[2]), int(sys.argv[3])
a = mx.random.normal((n, n)); b = mx.random.normal((n, n)); mx.eval(a, b)
mx.eval(a @ b)  # warm-up
times = []
for _ in range(repeats):
    t = time.perf_counter(); mx.eval(a @ b); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"gflops": 2 * n**3 / times[len(times) // 2] / 1e9}))
"""


def measure(variant: str, size: int, repeats: int) -> float:
    env_flag = {} if variant == "openblas" else {"SHARP_MLX_NO_OPENBLAS": "1"}


    out = subprocess.run(
        [sys.executable, "-c", _CHILD, variant, str(size), str(repeats)],
        capture_output=True, text=True, check=True, env={**os.environ, **env_flag},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["gflops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    reference = measure("reference", args.size, args.repeats)
    openblas = measure("openblas", args.size, args.repeats)
    print(f"f32 matmul {args.size}x{args.size}, median of {args.repeats}")
    print(f"  reference BLAS : {reference:8.1f} GFLOP/s")
    print(f"  OpenBLAS       : {openblas:8.1f} GFLOP/s")
    print(f"  ratio          : {openblas / reference:8.1f}x")


if __name__ == "__main__":
    main()
