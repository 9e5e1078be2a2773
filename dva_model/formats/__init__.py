"""Files: model checkpoints and the release's key layout, safe unpickling, latents, video and image I/O."""
