"""CIFAR-10 experiments with PyTorch Lightning and Hydra."""

# Label order of CIFAR-10: official folder names and the seed experiment's display names.
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DISPLAY_NAMES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
