"""Training a DVA: the published objective, clip data and the distributed trainer."""
