"""LLM compression stages (LLM Surgeon and baselines) called by the Snakemake rules."""

__version__ = "0.1.0"
