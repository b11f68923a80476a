"""The change units of the countries example, one module per stage of `pipeline.yaml`."""
