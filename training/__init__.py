"""Training edge: MLflow tracking, model registry, pyfunc packaging, tuning."""
