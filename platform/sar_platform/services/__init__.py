"""Services both sides use: MLflow tracking and its embedded server, the workspace storage, the Ray
runtime environment, and the picklable inputs a driver hands to its workers."""
