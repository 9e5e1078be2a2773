"""Faces in full frames: detection and landmarks, tracking, FFHQ alignment and paste-back."""
