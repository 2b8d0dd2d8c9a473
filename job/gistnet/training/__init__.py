"""Training: the (fold, model) unit, the training loop, checkpoints, compilation, torch.distributed, benchmarks.
May import: evidence (to score a trained model), data, observe and the top-level helpers; not serving or above."""
