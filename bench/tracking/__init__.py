"""Everything the suite writes to MLflow, and how it gets there.

- ``naming``: tags, params and metric keys of a variant run (one place);
- ``store``: the tracking URI, experiments, the run ``mlflow run`` made, the end of a command;
- ``runlog``: ``RunLog``, the one writer of a run: every write is first a record in the run folder's spool;
- ``spool``: the spool's files (``<run folder>/mlflow_spool``);
- ``sender``: the background thread that sends spooled records, through outages, in order;
- ``callbacks``: the trainer's epoch logger; ``artifacts``: datasets, plots, score files, config, model;
- ``model``: the embedder as an MLflow logged model.

The tracking URI is MLflow's own: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db``.
"""
