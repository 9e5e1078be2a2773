"""The diffusion maths: the noise schedule and its respacing, DDIM sampling and DDIM inversion. No file or video code."""
