"""Using a finished run: open its models (trained), score new images (predict), export to ONNX.
May import: training, evidence, data, observe and the top-level helpers; never the pipeline or the CLI."""
