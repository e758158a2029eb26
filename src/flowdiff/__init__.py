"""flowdiff: flow matching and diffusion models in PyTorch."""
