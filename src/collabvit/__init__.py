"""collabvit: attention-aware collaborative inference between an edge ViT and a server ViT."""

__version__ = "0.1.0"
