"""gistnet: train and audit EUS image classifiers for GIST vs leiomyoma."""

__version__ = "0.1.0"
