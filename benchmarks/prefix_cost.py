"""How `--min-shared-prefix` trades tokens saved against extra forward passes: counted, not timed.

    python benchmarks/prefix_cost.py [--model PATH] [--pass-cost 8 32] [--flops-per-byte 10]

For each corpus and each minimum (and without sharing) it plans the run exactly as `scorecli score` would
(`Scorer.plan_buffers`: the same buffers, windows, groups and batches; no model is run) and counts the tokens
fed, the positions computed (pads included), the forward passes and the cached positions copied to
continuation rows. A modelled cost, in tokens, weighs them:

    cost = computed + pass_cost x passes + copy_cost x cached

`pass_cost` is a forward pass's fixed cost (launching every layer's kernels, whatever the batch), in tokens'
worth of compute: a few milliseconds on a CPU, several tokens for SmolLM2 (try a few with --pass-cost);
`copy_cost` is copying one cached position's keys and values for one row, from the model's shape: its
bytes x `--flops-per-byte` (the machine's compute over its memory bandwidth) / 2 x parameters (a
token's compute). Deterministic: the same corpora give the same table on any machine.

Corpora: the two of make_prefix_corpora.py at full size (grpo, fewshot: long shared starts, where any
minimum up to their length shares the same), `openings` (400 plain texts opening with one of 40 starts of 1
to 20 words: short shared starts, where the minimum decides) and samples/long.jsonl (natural texts: starts
shared by chance only).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_prefix_corpora import WORDS, paragraph, write  # noqa: E402

MINIMUMS = (2, 4, 8, 16, 24, 32, 48, 64, 128)


def openings(path: Path, starts: int = 40, per_start: int = 10, seed: int = 2) -> None:
    """Plain texts, `per_start` after each of `starts` openings of 1 to 20 words, each then its own paragraph."""
    rng = random.Random(seed)
    heads = [" ".join(rng.choice(WORDS) for _ in range(1 + s % 20)).capitalize() + ":" for s in range(starts)]
    write(path, [{"text": f"{h} {paragraph(rng, 100)}"} for h in heads for _ in range(per_start)])


def main() -> None:
    """Plan each corpus with each minimum and print the counts and modelled costs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--pass-cost", type=float, nargs="+", default=[8.0, 32.0], help="a pass's cost, in tokens")
    parser.add_argument("--flops-per-byte", type=float, default=10.0, help="the machine's compute / bandwidth")
    parser.add_argument("--batch-tokens", type=int, default=None, help="as scorecli score's (default: the device's)")
    args = parser.parse_args()

    from scorecli.engine.models import load_model
    from scorecli.engine.scorer import Scorer
    from scorecli.inputs.records import Fields, read_records

    loaded = load_model(args.model, device="cpu", dtype="float32")
    config = loaded.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    position_bytes = 2 * config.num_hidden_layers * heads * head_dim * 4
    token_flops = 2 * sum(p.numel() for p in loaded.model.parameters())
    copy_cost = position_bytes * args.flops_per_byte / token_flops
    print(f"copy_cost: {position_bytes:,} bytes a cached position, {copy_cost:.4f} tokens; pass_cost: {args.pass_cost}")
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        subprocess.run([sys.executable, str(HERE / "make_prefix_corpora.py"), str(folder)], check=True)
        openings(folder / "openings.jsonl")
        corpora = {
            "grpo": (folder / "grpo.jsonl", Fields(prompt="prompt", response="response")),
            "fewshot": (folder / "fewshot.jsonl", Fields()),
            "openings": (folder / "openings.jsonl", Fields()),
            "long": (HERE.parent / "samples" / "long.jsonl", Fields()),
        }
        costs = " ".join(f"{f'cost@{c:g}':>13}" for c in args.pass_cost)
        print(f"{'corpus':9} {'minimum':>7} {'fed':>9} {'computed':>9} {'passes':>7} {'cached':>9} {costs}")
        best: dict[float, list[tuple[str, list[int]]]] = {c: [] for c in args.pass_cost}
        for name, (path, fields) in corpora.items():
            rows = []
            for minimum in (None, *MINIMUMS):
                scorer = Scorer(
                    loaded.model,
                    loaded.tokenizer,
                    batch_tokens=args.batch_tokens,
                    prefix_sharing=minimum is not None,
                    min_shared_prefix=minimum or 2,
                )
                passes = [p for b in scorer.plan_buffers(read_records(path, fields=fields)) for t in b.tasks for p in t]
                fed, computed = sum(p.tokens for p in passes), sum(p.padded for p in passes)
                cached = sum(p.rows * p.cached for p in passes)
                modelled = [computed + c * len(passes) + copy_cost * cached for c in args.pass_cost]
                rows.append((minimum, modelled))
                relative = " ".join(f"{m:9,.0f} ({m / rows[0][1][i]:.2f})" for i, m in enumerate(modelled))
                label = "off" if minimum is None else str(minimum)
                print(f"{name:9} {label:>7} {fed:9,} {computed:9,} {len(passes):7,} {cached:9,} {relative}")
            for i, c in enumerate(args.pass_cost):
                lowest = min(m[i] for _, m in rows[1:])
                best[c].append((name, [minimum for minimum, m in rows[1:] if m[i] <= lowest * 1.001]))
        for c, found in best.items():
            print(
                f"pass_cost {c:g}: minimums within 0.1% of the lowest cost: " + "; ".join(f"{n} {m}" for n, m in found)
            )


if __name__ == "__main__":
    main()
