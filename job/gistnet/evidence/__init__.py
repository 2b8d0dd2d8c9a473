"""Evidence: metrics and their intervals, model comparison, calibration, saliency, and the reports built from them.
May import: data (storage, the run's units), observe and the top-level helpers; never training or serving."""
