"""Orchestration: one variant (run_variant, its tracked run, seed repeats), sweeps, the Optuna search, Slurm
jobs, the energy forecast probe."""
