"""Analysis: MLflow runs -> pandas -> tables, Pareto and knee plots, report.md."""
