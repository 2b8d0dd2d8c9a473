"""Operating trained models over time: the champion/challenger gate and the production pointer
(promotion), and what a finished run sends to the experiment tracker (record).
May import: serving, training, evidence, data, observe and the top-level helpers; never the pipeline or the CLI."""
