"""Training loops: the classifier and the generator attack."""
