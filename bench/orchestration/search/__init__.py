"""The Optuna search: study setup, one trial, the workers, what the search costs, recovery of killed workers."""
