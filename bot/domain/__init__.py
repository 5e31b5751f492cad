"""The domain vocabulary: a leaf that everything may import and that imports nothing of ours."""
