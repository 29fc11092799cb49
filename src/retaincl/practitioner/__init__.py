"""The practitioner's workflow: a deployed classifier that learns new classes from folders,
predicts from the command line, and says when it has not seen a class.

- :mod:`.inputs`: paths, folders, PIL images and arrays of mixed sizes, read one way;
- :mod:`.calibration`: scores to probabilities per method family;
- :mod:`.memory`: the per-class sample of training features that calibration and novelty read;
- :mod:`.novelty`: MemAE, maximum softmax probability and energy scores, thresholds, ``unknown``;
- :mod:`.runs`: a method folder of ``retaincl run`` opened as a model;
- :mod:`.facts`: what each method's model keeps and how it grows (``retaincl list``);
- :mod:`.commands`: ``retaincl learn`` and ``retaincl predict``;
- :mod:`.mnist_folders`: mnist5k written as PNG class folders, for the guide and the tests.

The model itself is :class:`retaincl.api.ContinualModel`; docs/practitioner.md is the guide.
"""
