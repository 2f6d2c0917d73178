"""The command line, one module per command group (``svbench data | config | models | train | eval | infer |
export | sweep | jobs | report | search | dashboard | sync``); ``main`` builds the parser.

Command modules import the layers they drive (torch, MLflow, Optuna) inside their command functions, so that
``svbench --help`` and a one-line error for bad input answer without loading them.
"""
