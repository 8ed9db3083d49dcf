"""Fine-tuning data: labels, splits, and the DataModules of each task family."""
