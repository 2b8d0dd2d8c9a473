"""Several observers of the training loop (``train.Observer``: ``on_step``, ``on_epoch``) heard as one.

The Prometheus metrics and MLflow tracking are composed here, so the loop calls one observer
and has no branch per backend (MONAI's handlers on one engine, in the same spirit)."""

from __future__ import annotations


class Observers:
    def __init__(self, *observers):
        self.observers = observers

    def on_step(self, model_name, images):
        for o in self.observers:
            o.on_step(model_name, images)

    def on_epoch(self, model_name, record, total_epochs):
        for o in self.observers:
            o.on_epoch(model_name, record, total_epochs)
