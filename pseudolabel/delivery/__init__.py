"""What a run delivered, export, the SavedModel, predicting new posts."""
