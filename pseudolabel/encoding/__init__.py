"""Encoder folders, the frozen feature pass and its cache, pretraining, the linear probe."""
