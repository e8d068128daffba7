"""The run folder layer: the run folder's file names, its protocol (parts, resume, finish) and its reader.

Layer: run folder. It must not import the engine, the analysis, the executors or the front of scorecli, nor torch,
transformers, rich, typer, ray, plotly or lm_eval.
"""
