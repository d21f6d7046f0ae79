"""The recipe's head, its layers and losses, the fine-tuned student's model."""
