"""A run's options, its folds and rounds, selection, the co-teacher, the delivery rule."""
