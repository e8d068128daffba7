"""The engine layer: models loaded, records batched, forward passes, statistics over blocks of logits.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""
