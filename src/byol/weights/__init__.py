"""Weights in other toolkits' layouts: :mod:`.foreign` reads them (mmselfsup, mmpretrain,
torchvision), :mod:`.export` writes a byol backbone for them and imports foreign weights as a
byol checkpoint."""
