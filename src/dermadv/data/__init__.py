"""Data: readers, splits, the synthetic set and the decode-once cache."""
