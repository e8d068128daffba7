"""The data model layer: the scoring options, a document's scores and words, and the tables' columns.

Layer: data model. It must not import the engine, the run folder, the analysis, the executors or the front of
scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""
