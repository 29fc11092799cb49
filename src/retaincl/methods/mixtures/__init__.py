"""Model-mixture methods (the survey's third family) on the shared PETL ViT.

- ``esn``: ESN (Wang et al., AAAI 2023): one isolated candidate per task, energy-aligned,
  picked per sample by temperature-controlled energy and a vote;
- ``lae``: LAE (Gao et al., ICCV 2023): one PET module learned online, an EMA copy
  offline, their softmax outputs ensembled by a per-class max;
- ``cofima``: CoMA and CoFiMA (Marouf et al., ECCV 2024): SLCA training, then the model
  after a task is the (Fisher-)weighted average of the models before and after it;
- ``ease``: EASE (Zhou et al., CVPR 2024): one adapter (subspace) per task, prototypes of
  old classes synthesised in new subspaces, all subspaces concatenated at test time.

``common`` holds what two of them share (running the ViT with another set of PET
weights, PyTorch's default initialisation drawn from a generator).
"""
