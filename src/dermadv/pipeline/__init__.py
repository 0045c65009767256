"""The pipeline: run folders around each stage, composed from the library packages below it (docs/DESIGN.md)."""
