"""Run folders written by hand for show and report tests: chosen values, with or without optional columns."""

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorecli.data.tables import SEQUENCE_SCHEMA, TOKEN_SCHEMA

TEXTS = [
    "The cat sat on the mat.",
    "Colourless green ideas sleep furiously.",
    "Le café est très chaud, n'est-ce pas?",
    "One more line\nwith a newline in it.",
    "ok",
]


def make_run(folder, extras=False, seed=0, texts=TEXTS):
    """A finished run of `texts` (input file next to it) with word-sized tokens and made-up scores.

    Token i of the corpus has logprob -(i % 9) * 1.5 nats, so surprisals cover the whole colour scale.
    With `extras`, tokens get rank, top_ids/top_logprobs/top_tokens, ref_logprob, kl and reverse_kl.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = folder.parent / f"{folder.name}-input.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    rng = np.random.default_rng(seed)
    rows, seqs, k = [], [], 0
    for doc, text in enumerate(texts):
        spans = [m.span() for m in re.finditer(r"\s*\S+", text)]
        lps = []
        for pos, (a, b) in enumerate(spans):
            lp = -(k % 9) * 1.5 - seed * 0.4 * (k % 3)  # another seed: the same tokens, other scores
            row = {
                "doc": doc, "id": f"d{doc}", "position": pos, "token_id": k % 50, "token": text[a:b],
                "start": a, "end": b, "logprob": lp, "entropy": float(rng.uniform(0, 6)), "is_response": True,
            }  # fmt: skip
            if extras:
                row.update(
                    rank=int(1 + (k % 7) ** 3),
                    top_ids=[1, 2, 3],
                    top_logprobs=[-0.5, -1.5, -2.5],
                    top_tokens=["a", "b", "c"],
                    ref_logprob=lp - 0.3,
                    kl=float((k % 5) * 0.6),
                    reverse_kl=float((k % 4) * 0.5),
                )
            rows.append(row)
            lps.append(lp)
            k += 1
        n, s = len(lps), float(sum(lps))
        seqs.append(
            {
                "doc": doc,
                "id": f"d{doc}",
                "n_tokens": n,
                "sum_logprob": s,
                "mean_logprob": s / n,
                "perplexity": math.exp(-s / n),
                "mean_entropy": 3.0,
                "n_bytes": len(text.encode()),
                "bits_per_byte": -s / (len(text.encode()) * math.log(2)),
                "n_words": n,
                "word_perplexity": math.exp(-s / n),
                "truncated": False,
            }  # fmt: skip
        )
    meta = {"model": "hand-made", "dtype": "float32", "input": str(data), "input_size": str(data.stat().st_size)}
    meta.update({"id_field": "id", "text_field": "text", "bos": "prepended <s> (id 0)", "scored": "all tokens"})
    # Without extras, a run as an older scorecli wrote it: not even the rank column.
    token_schema = TOKEN_SCHEMA.remove(TOKEN_SCHEMA.get_field_index("rank"))
    if extras:
        for name, typ in (
            ("rank", pa.int32()), ("top_ids", pa.list_(pa.int32())), ("top_logprobs", pa.list_(pa.float32())),
            ("top_tokens", pa.list_(pa.string())), ("ref_logprob", pa.float32()), ("kl", pa.float32()),
            ("reverse_kl", pa.float32()),
        ):  # fmt: skip
            token_schema = token_schema.append(pa.field(name, typ))
    encoded = {a.encode(): b.encode() for a, b in meta.items()}
    pq.write_table(pa.Table.from_pylist(rows, token_schema.with_metadata(encoded)), folder / "tokens.parquet")
    pq.write_table(pa.Table.from_pylist(seqs, SEQUENCE_SCHEMA.with_metadata(encoded)), folder / "sequences.parquet")
    (folder / "summary.json").write_text(json.dumps({"summary": {}, "metadata": meta}))
    return folder
