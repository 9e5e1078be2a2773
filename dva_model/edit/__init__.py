"""Identity edits: classifier directions, the CLIP-guided edit and training new directions."""
