"""Vision-language backbones (SigLIP ViT + Gemma), action heads and the policy."""
