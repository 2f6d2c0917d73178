"""Reports from MLflow runs: tables, Pareto front and knee, paired comparisons, figures."""
