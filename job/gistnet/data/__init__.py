"""Data in: object storage, decoding and the ultrasound region, the split, augmentation, synthetic data.
May import: observe and the top-level helpers (config, errors, models, plots); nothing above data."""
