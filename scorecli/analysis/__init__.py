"""The analysis layer: summaries, intervals, comparisons, filters, and the terminal and HTML views of runs.

Layer: analysis. It must not import the engine, the executors or the front of scorecli, nor torch, transformers,
typer, ray or lm_eval.
"""
