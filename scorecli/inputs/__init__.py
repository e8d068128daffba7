"""The inputs layer: records read, validated and streamed from files, folders and URLs; the input fields kept.

Layer: inputs. It must not import the data model, the engine, the run folder, the analysis, the executors or the
front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""
