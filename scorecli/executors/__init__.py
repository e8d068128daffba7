"""The executors layer: the one scoring loop, its scale-out on Ray, and the model of lm-evaluation-harness.

Layer: executors. It must not import the front of scorecli, nor torch, rich, typer or plotly.
"""
