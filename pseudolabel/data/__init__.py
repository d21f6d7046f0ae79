"""Reading posts, tokenizing, batching and scores."""
