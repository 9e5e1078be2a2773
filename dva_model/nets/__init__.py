"""The networks: the DVA UNet and the frozen face encoders (ArcFace, landmark net, BiSeNet). No file or video code."""
