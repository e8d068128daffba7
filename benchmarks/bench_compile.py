"""The base model's forward pass compiled (`--compile on`: decoder layers, inductor) against eager, on one thread.

    python benchmarks/bench_compile.py [--model PATH] [--dtype float32] [--repeat 3]

Compiles as a scoring run does (scorecli.engine.compiled.CompiledForward, the kernels cached in the scorecli cache
folder: a second run of this script measures the warm cache), then times the forward pass of batches of
several shapes eagerly and compiled, best of --repeat, and prints tokens/s and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from scorecli.engine.compiled import CompiledForward
from scorecli.engine.models import load_model

SHAPES = ((4, 256), (1, 1000), (8, 128), (2, 500))


def best(forward, ids: torch.Tensor, repeat: int) -> float:
    """The shortest of `repeat` timings of a forward pass on `ids`, after one to warm up."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        forward(input_ids=ids, attention_mask=None, use_cache=False)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    """Compile, then time eager and compiled forward passes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = load_model(args.model, device="cpu", dtype=args.dtype).model.base_model
    start = time.perf_counter()
    compiled = CompiledForward(base, threads=1, auto=False)
    print(f"compile: {time.perf_counter() - start:.1f} s, {compiled.mode}")
    torch.set_num_threads(1)
    with torch.inference_mode():
        for shape in SHAPES:
            ids = torch.randint(0, base.config.vocab_size, shape)
            eager, fast = best(base, ids, args.repeat), best(compiled, ids, args.repeat)
            tokens = shape[0] * shape[1]
            print(
                f"{shape[0]} x {shape[1]}: eager {tokens / eager:.0f} tok/s, compiled {tokens / fast:.0f} tok/s, "
                f"{eager / fast:.2f}x"
            )


if __name__ == "__main__":
    main()
