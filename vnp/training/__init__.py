"""Training a VirNucPro classifier head (`vnp train`): inputs, features, the head, outputs."""
