"""The run-time layer: load a verified bundle and classify texts. Never imports build, export or torch code."""
