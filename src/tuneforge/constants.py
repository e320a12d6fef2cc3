"""Values shared by the data, model and train stages, kept here so that none imports another for them."""

# The label of a position that is not trained (PyTorch cross-entropy's ignore_index).
IGNORE = -100
