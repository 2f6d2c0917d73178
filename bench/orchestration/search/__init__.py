"""Energy-constrained multi-objective search with Optuna: depth, width and stage layout to the front.

Objectives: minimise EER (%) on one trial list and minimise training energy (J), or carbon (g) with
``search.objective carbon``. Constraints (feasible when <= 0): energy budget, carbon budget, maximum
parameters. They are stored by the sampler's ``constraints_func`` in the trial system attribute
``constraints`` (a list), which is what ``study.best_trials`` and optuna-dashboard 0.21 read.

Before a trial trains, the energy probe forecasts its training energy; a trial forecast to exceed the
budget by ``search.prune_margin`` ends PRUNED with its forecast as the constraint value.

What the search costs is measured once, by the process that starts the workers: one energy window over
the whole run, on every GPU the workers use and on the machine-level meters (RAPL, node command). That
is ``search/energy_j`` (summed over the runs of a continued study): probes, pruned, failed and killed
trials included, never N times the machine. Each trial also records what it spent (``spent_energy_j``),
measured by its worker: its own GPUs, and under ``--workers N`` its CPU-time share of the machine-level
meters (``bench.energy.plan``), so the trials' sum never exceeds the search's cost.

Storage: an Optuna journal file by default (several processes on one machine), any RDB URL for
several machines (with heartbeats, so a killed worker's trial ends FAIL). ``--workers N`` runs N
worker processes (``worker_main``), each with its own GPUs when the machine has them; the
study and its parent MLflow run are created once before they start.

Modules, one job each: ``study``, ``trial`` (one trial), ``workers`` (local processes or a Slurm array),
``cost`` (the search's energy), ``recovery`` (killed workers), ``run`` (``svbench search``).
"""
