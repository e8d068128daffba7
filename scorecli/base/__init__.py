"""The base layer: the errors shown to users, option checks, interrupts and injected faults.

Layer: base. It must not import the inputs, the data model, the engine, the run folder, the analysis, the executors
or the front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""
