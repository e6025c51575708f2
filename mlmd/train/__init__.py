"""Training: the loop (trainer.py), the data it sees (dataset.py), losses, metrics, the weight average (ema.py),
the run's output folder (run_files.py) and ensembles."""
